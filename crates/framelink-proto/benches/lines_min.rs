//! The lines encoders, framelink's against tokio-util's `LinesCodec` and `AnyDelimiterCodec`,
//! timed by the minimum over many short repetitions instead of criterion's mean.
//!
//! On a shared machine (2 cores, other builds running) criterion's estimates of these
//! nanosecond-scale loops swing by 30% or more between runs, because a preempted sample counts in
//! full. The fastest of a few hundred repetitions, each encoding one whole stream, is the figure
//! other work disturbs least. The three encoders are interleaved within every repetition, so they
//! see the same machine state. Same inputs as the `encode_lines` group of `codecs.rs`: 1 MiB of
//! printable-ASCII lines (at least 64), encoded into one reused `BytesMut`. With `--packed` the
//! lines lie back to back in one buffer instead (one byte apart), so most start at odd addresses,
//! as lines sliced out of a received stream do.
//!
//! ```sh
//! cargo bench -p framelink-proto --bench lines_min                 # 16 B, 256 B, 4 KiB, 64 KiB
//! cargo bench -p framelink-proto --bench lines_min -- 256 4096 --reps 1000
//! cargo bench -p framelink-proto --bench lines_min -- 100 256 --packed
//! ```
//! Each line of output gives ns per line for each encoder, and tokio-util's time divided by
//! framelink's (above 1: framelink is faster).

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use framelink_proto::codec::{FrameEncoder, LinesCodec, LinesConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::codec::{AnyDelimiterCodec, Encoder};

const MAX_LINE: usize = 1 << 20;
const STREAM_PAYLOAD: usize = 1024 * 1024;
const MIN_FRAMES: usize = 64;

fn main() {
    // Every number on the command line is a line size; `--reps N` sets the repetitions. Flags
    // cargo adds (`--bench`) are ignored.
    let mut sizes = Vec::new();
    let mut reps = 300;
    let mut packed = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--packed" {
            packed = true;
        } else if arg == "--reps" {
            reps = args.next().and_then(|n| n.parse().ok()).expect("--reps N");
        } else if let Ok(size) = arg.parse::<usize>() {
            sizes.push(size);
        }
    }
    if sizes.is_empty() {
        sizes = vec![16, 256, 4096, 65536];
    }
    for size in sizes {
        run(size, reps, packed);
    }
}

fn run(size: usize, reps: usize, packed: bool) {
    let frames = (STREAM_PAYLOAD / size).max(MIN_FRAMES);
    let mut rng = StdRng::seed_from_u64(size as u64);
    let mut line = || -> String {
        (0..size)
            .map(|_| rng.gen_range(b' '..=b'~') as char)
            .collect()
    };
    // Either one allocation per line, or every line in one string, a space after each.
    let (owned, arena): (Vec<String>, String) = if packed {
        let arena = (0..frames).map(|_| line() + " ").collect();
        (Vec::new(), arena)
    } else {
        ((0..frames).map(|_| line()).collect(), String::new())
    };
    let texts: Vec<&str> = if packed {
        (0..frames)
            .map(|f| &arena[f * (size + 1)..f * (size + 1) + size])
            .collect()
    } else {
        owned.iter().map(String::as_str).collect()
    };
    let framelink = LinesCodec::new(LinesConfig {
        max_frame_length: MAX_LINE,
        ..Default::default()
    })
    .expect("lines config");
    let mut lines = tokio_util::codec::LinesCodec::new_with_max_length(MAX_LINE);
    let mut any = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_LINE);

    let mut dst = BytesMut::with_capacity(frames * (size + 1));
    let mut best = [f64::INFINITY; 3];
    for _ in 0..reps {
        for (which, best) in best.iter_mut().enumerate() {
            dst.clear();
            let start = Instant::now();
            match which {
                0 => {
                    for t in &texts {
                        framelink
                            .encode(black_box(t.as_bytes()), &mut dst)
                            .expect("encode");
                    }
                }
                1 => {
                    for t in &texts {
                        Encoder::<&str>::encode(&mut lines, black_box(*t), &mut dst)
                            .expect("encode");
                    }
                }
                _ => {
                    for t in &texts {
                        Encoder::<&str>::encode(&mut any, black_box(*t), &mut dst).expect("encode");
                    }
                }
            }
            black_box(&dst);
            let ns = start.elapsed().as_secs_f64() * 1e9 / frames as f64;
            *best = best.min(ns);
        }
        // Every encoder wrote the same stream.
        debug_assert_eq!(dst.len(), frames * (size + 1));
    }
    let [f, l, a] = best;
    let layout = if packed { ", packed" } else { "" };
    println!(
        "{size:>6} B{layout}, min ns/line over {reps} reps: framelink {f:8.2}  LinesCodec {l:8.2}  \
         AnyDelimiterCodec {a:8.2}  | LinesCodec/framelink {:.2}  AnyDelimiterCodec/framelink {:.2}",
        l / f,
        a / f
    );
}
