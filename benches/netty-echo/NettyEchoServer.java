/*
 * A minimal Netty echo server for `framelink bench --framing length:4`: 4-byte big-endian
 * length-prefixed frames, each echoed back with the same framing.
 *
 * The pipeline is LengthFieldBasedFrameDecoder(maxFrame, 0, 4, 0, 4) + LengthFieldPrepender(4),
 * and the handler writes each frame without flushing and flushes once per read burst, in
 * channelReadComplete, as Netty's own echo example does. Epoll when available, NIO otherwise.
 *
 * Usage: java -cp ... NettyEchoServer [HOST:]PORT [THREADS] [MAX_FRAME]
 *   THREADS: worker event-loop threads (default: Netty's default, 2 x cores)
 *   MAX_FRAME: largest frame accepted, in bytes (default 8388608, framelink's default max)
 */

import io.netty.bootstrap.ServerBootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandler.Sharable;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.ServerChannel;
import io.netty.channel.epoll.Epoll;
import io.netty.channel.epoll.EpollEventLoopGroup;
import io.netty.channel.epoll.EpollServerSocketChannel;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.handler.codec.LengthFieldBasedFrameDecoder;
import io.netty.handler.codec.LengthFieldPrepender;

public final class NettyEchoServer {

    /** Writes every frame back; flushes once per read burst. */
    @Sharable
    static final class EchoHandler extends ChannelInboundHandlerAdapter {
        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) {
            ctx.write(msg);
        }

        @Override
        public void channelReadComplete(ChannelHandlerContext ctx) {
            ctx.flush();
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            System.err.println("netty-echo: " + ctx.channel().remoteAddress() + ": " + cause);
            ctx.close();
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 3) {
            System.err.println("usage: NettyEchoServer [HOST:]PORT [THREADS] [MAX_FRAME]");
            System.exit(2);
        }
        String host = "127.0.0.1";
        String port = args[0];
        int colon = args[0].lastIndexOf(':');
        if (colon >= 0) {
            host = args[0].substring(0, colon);
            port = args[0].substring(colon + 1);
        }
        int threads = args.length > 1 ? Integer.parseInt(args[1]) : 0;
        int maxFrame = args.length > 2 ? Integer.parseInt(args[2]) : 8 * 1024 * 1024;

        boolean epoll = Epoll.isAvailable();
        EventLoopGroup boss = epoll ? new EpollEventLoopGroup(1) : new NioEventLoopGroup(1);
        EventLoopGroup workers = epoll ? new EpollEventLoopGroup(threads) : new NioEventLoopGroup(threads);
        Class<? extends ServerChannel> channel =
            epoll ? EpollServerSocketChannel.class : NioServerSocketChannel.class;
        EchoHandler echo = new EchoHandler();
        try {
            ServerBootstrap bootstrap = new ServerBootstrap()
                .group(boss, workers)
                .channel(channel)
                .option(ChannelOption.SO_BACKLOG, 1024)
                .childOption(ChannelOption.TCP_NODELAY, true)
                .childHandler(new ChannelInitializer<SocketChannel>() {
                    @Override
                    public void initChannel(SocketChannel ch) {
                        ch.pipeline().addLast(
                            new LengthFieldBasedFrameDecoder(maxFrame, 0, 4, 0, 4),
                            new LengthFieldPrepender(4),
                            echo);
                    }
                });
            Channel server = bootstrap.bind(host, Integer.parseInt(port)).sync().channel();
            System.err.println("netty-echo: listening on " + server.localAddress() + " ("
                + (epoll ? "epoll" : "nio") + ", " + (threads == 0 ? "default" : threads)
                + " worker threads, max frame " + maxFrame + " bytes)");
            if (!epoll) {
                System.err.println("netty-echo: epoll unavailable: " + Epoll.unavailabilityCause());
            }
            server.closeFuture().sync();
        } finally {
            boss.shutdownGracefully();
            workers.shutdownGracefully();
        }
    }
}
