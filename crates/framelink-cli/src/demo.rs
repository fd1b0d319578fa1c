//! `framelink demo`: the README's first command. Streams messages over real loopback TCP, with
//! the sender cutting its writes at random points, and shows for each framing how the reads
//! arrived (glued, split) and that every message came out exactly, in order. Exits non-zero if
//! any message was lost, altered, duplicated or reordered.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clap::Args;
use framelink::proto::codec::{AnyCodec, LengthFieldCodec, LengthFieldConfig};
use framelink::{FrameDecoder, FrameEncoder, Framing};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Options of `framelink demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Messages to send per framing.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Seed for message sizes and write cuts (the same seed replays the same run).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Framing specs to run (repeatable); by default one of each kind.
    #[arg(long = "framing")]
    framings: Vec<String>,
    /// Messages each way in part 2 (sessions over a link the chaos proxy keeps cutting);
    /// 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    link_messages: u32,
}

const DEFAULT_FRAMINGS: &[&str] = &[
    "length:4,max=1MiB",
    "length:2,le,offset=1,adjust=-3,strip=3,max=64KiB",
    "varint,max=1MiB",
    "line,max=64KiB",
    "delim:\"\\r\\n\"|00,max=64KiB",
    "fixed:64",
    "netstring,max=1MiB",
    "magic:f1a9,crc=crc32c,max=1MiB",
];

/// What the reader saw for one framing.
#[derive(Default)]
struct Tally {
    reads: u64,
    glued_reads: u64,
    most_in_one_read: u64,
    split_messages: u64,
    naive_correct: u64,
    recovered: u64,
    skipped_bytes: u64,
    received: Vec<Vec<u8>>,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: DemoArgs) -> Result<ExitCode> {
    let specs: Vec<String> = if args.framings.is_empty() {
        DEFAULT_FRAMINGS.iter().map(|s| s.to_string()).collect()
    } else {
        args.framings.clone()
    };
    println!("framelink demo, part 1: TCP keeps no message boundaries.");
    println!(
        "For each framing, {} messages (0 B to 16 KiB) go over loopback TCP; the sender cuts its",
        args.messages
    );
    println!(
        "writes at random points, so reads arrive glued together and split apart. The receiver"
    );
    println!(
        "decodes with framelink and checks every message. The magic framing also gets garbage"
    );
    println!("injected between frames, to show it resynchronising.\n");
    println!(
        "{:<50} {:>6} {:>6} {:>6} {:>5} {:>6} {:>6}  result",
        "framing", "msgs", "reads", "glued", "most", "split", "naive"
    );
    let started = Instant::now();
    let mut failures = 0;
    for (i, spec) in specs.iter().enumerate() {
        let framing: Framing = spec
            .parse()
            .with_context(|| format!("bad framing spec {spec:?}"))?;
        let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(i as u64));
        let messages: Vec<Vec<u8>> = (0..args.messages)
            .map(|_| message_for(&framing, &mut rng))
            .collect();
        let inject_garbage = matches!(framing.codec(), AnyCodec::Magic(_));
        let wire = encode_all(&framing, &messages, inject_garbage, &mut rng)?;
        let tally = transfer(framing, wire, &mut rng).await?;
        let ok = tally.received == messages;
        let result = if ok {
            format!("ok: all {} exact, in order", messages.len())
        } else {
            failures += 1;
            format!(
                "FAILED: {} received, {} expected",
                tally.received.len(),
                messages.len()
            )
        };
        println!(
            "{:<50} {:>6} {:>6} {:>6} {:>5} {:>6} {:>6}  {}",
            spec,
            messages.len(),
            tally.reads,
            tally.glued_reads,
            tally.most_in_one_read,
            tally.split_messages,
            tally.naive_correct,
            result
        );
        if tally.recovered > 0 {
            println!(
                "{:<50} resynchronised {} times, skipping {} garbage bytes",
                "", tally.recovered, tally.skipped_bytes
            );
        }
    }
    println!();
    println!("glued: reads that carried two or more messages; most: the most messages in one read");
    println!("split: messages that arrived across two or more reads");
    println!("naive: messages a reader that takes each read() as one message would have got right");
    println!("time:  {:.2?}", started.elapsed());
    if failures == 0 {
        println!(
            "\nEvery message of every framing arrived exactly once, in order: framelink restored the boundaries."
        );
    } else {
        println!("\n{failures} framing(s) FAILED");
    }
    let link_ok = if args.link_messages > 0 {
        println!("\n{}\n", "-".repeat(78));
        crate::demo_link::run(args.link_messages, args.seed).await?
    } else {
        true
    };
    if link_ok && args.link_messages > 0 {
        println!(
            "\nEvery message arrived exactly once, in order, both ways, across every cut: nothing lost, nothing twice."
        );
    }
    if failures == 0 && link_ok {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nThe demo FAILED (see above).");
        Ok(ExitCode::FAILURE)
    }
}

/// A random message the framing can carry.
fn message_for(framing: &Framing, rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.gen_range(0..10) {
        0..=5 => rng.gen_range(0..48),
        6..=8 => rng.gen_range(48..1500),
        _ => rng.gen_range(1500..16 * 1024),
    };
    match framing.codec() {
        AnyCodec::Fixed(c) => (0..c.config().length).map(|_| rng.gen()).collect(),
        AnyCodec::Lines(_) | AnyCodec::Delimiter(_) => {
            // Printable text: cannot contain a delimiter.
            (0..len).map(|_| rng.gen_range(b' '..=b'~')).collect()
        }
        _ => (0..len).map(|_| rng.gen()).collect(),
    }
}

fn encode_all(
    framing: &Framing,
    messages: &[Vec<u8>],
    inject_garbage: bool,
    rng: &mut StdRng,
) -> Result<BytesMut> {
    let mut wire = BytesMut::new();
    let prefixed = PrefixedEncoder::for_framing(framing)?;
    for m in messages {
        if inject_garbage && rng.gen_bool(0.01) {
            // Bytes that are not the magic's first byte, so they cannot start a frame.
            let n = rng.gen_range(1..200);
            wire.extend((0..n).map(|_| rng.gen_range(0x00..0xf0u8)));
        }
        match &prefixed {
            Some(p) => p.encode(m, &mut wire)?,
            None => framing.encode(m, &mut wire)?,
        }
    }
    Ok(wire)
}

/// Netty-style frames with bytes before the length field (`offset > 0`), which the length-field
/// encoder cannot write because it cannot know them: the demo writes
/// `[offset filler bytes][length field][extra header bytes][payload]` itself, with the field
/// written by an offset-0 encoder of the same width, order and adjustment (the field's value only
/// depends on the bytes after it).
struct PrefixedEncoder {
    offset: usize,
    /// Header bytes after the field that the decoder strips along with it.
    extra: usize,
    field: LengthFieldCodec,
}

impl PrefixedEncoder {
    fn for_framing(framing: &Framing) -> Result<Option<Self>> {
        let AnyCodec::LengthField(c) = framing.codec() else {
            return Ok(None);
        };
        let cfg = c.config();
        if cfg.offset == 0 {
            return Ok(None);
        }
        let field = LengthFieldCodec::new(LengthFieldConfig {
            offset: 0,
            strip: cfg.width,
            // The same limit on the whole frame, offset bytes included.
            max_frame_length: cfg.max_frame_length - cfg.offset,
            ..cfg.clone()
        })?;
        Ok(Some(PrefixedEncoder {
            offset: cfg.offset,
            extra: cfg.strip.saturating_sub(cfg.header_length()),
            field,
        }))
    }

    fn encode(&self, m: &[u8], wire: &mut BytesMut) -> Result<()> {
        wire.extend(std::iter::repeat_n(0xa5u8, self.offset));
        let mut body = vec![0x5au8; self.extra];
        body.extend_from_slice(m);
        self.field.encode(&body, wire)?;
        Ok(())
    }
}

/// Sends `wire` over a fresh loopback connection in random pieces and decodes it on the other side.
async fn transfer(mut framing: Framing, wire: BytesMut, rng: &mut StdRng) -> Result<Tally> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let writer_seed: u64 = rng.gen();
    let writer = tokio::spawn(write_in_pieces(addr, wire, writer_seed));
    let (mut socket, _) = listener.accept().await?;
    let mut tally = Tally::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut eof = false;
    while !eof {
        buf.reserve(16 * 1024);
        let had_partial = !buf.is_empty();
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read_buf(&mut buf))
            .await
            .context("demo reader timed out")??;
        eof = n == 0;
        if !eof {
            tally.reads += 1;
        }
        let mut in_this_read = 0u64;
        loop {
            let result = framing.decode_with_eof(&mut buf, eof);
            match result {
                Ok(Some(frame)) => {
                    if in_this_read == 0 && had_partial {
                        tally.split_messages += 1;
                    }
                    in_this_read += 1;
                    tally.received.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    tally.recovered += 1;
                    if let framelink::DecodeErrorKind::Resynchronized { skipped, .. } = e.kind() {
                        tally.skipped_bytes += skipped;
                    }
                }
                Err(e) => bail!("decode error: {e}"),
            }
        }
        if in_this_read >= 2 {
            tally.glued_reads += 1;
        }
        tally.most_in_one_read = tally.most_in_one_read.max(in_this_read);
        if in_this_read == 1 && !had_partial && buf.is_empty() {
            tally.naive_correct += 1;
        }
    }
    writer.await??;
    Ok(tally)
}

async fn write_in_pieces(addr: SocketAddr, wire: BytesMut, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut rest = &wire[..];
    while !rest.is_empty() {
        // A burst of a few writes, then a pause: bursts glue messages, cuts split them.
        for _ in 0..rng.gen_range(1..8) {
            if rest.is_empty() {
                break;
            }
            let n = rng.gen_range(1..=rest.len().min(2500));
            stream.write_all(&rest[..n]).await?;
            rest = &rest[n..];
        }
        if rng.gen_bool(0.2) {
            tokio::time::sleep(Duration::from_micros(300)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    stream.shutdown().await?;
    Ok(())
}
