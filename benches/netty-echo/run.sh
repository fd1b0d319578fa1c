#!/bin/sh
# Compiles NettyEchoServer.java against Debian's Netty jars (package libnetty-java) and runs it:
#   benches/netty-echo/run.sh [HOST:]PORT [THREADS] [MAX_FRAME]
# The class files go to $NETTY_ECHO_BUILD (default: a directory under /tmp); NETTY_JARS
# overrides where the jars are (default /usr/share/java).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
jars=${NETTY_JARS:-/usr/share/java}
build=${NETTY_ECHO_BUILD:-${TMPDIR:-/tmp}/netty-echo-build}
cp=""
for jar in netty-common netty-buffer netty-transport netty-codec netty-handler \
           netty-resolver netty-transport-native-unix-common netty-transport-native-epoll; do
    if [ ! -f "$jars/$jar.jar" ]; then
        echo "run.sh: $jars/$jar.jar not found (apt-get install libnetty-java)" >&2
        exit 1
    fi
    cp="$cp${cp:+:}$jars/$jar.jar"
done
mkdir -p "$build"
if [ ! -f "$build/NettyEchoServer.class" ] || [ "$here/NettyEchoServer.java" -nt "$build/NettyEchoServer.class" ]; then
    javac -d "$build" -cp "$cp" "$here/NettyEchoServer.java"
fi
exec java -cp "$build:$cp" NettyEchoServer "$@"
