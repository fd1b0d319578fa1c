//! The `framelink` command-line tool: debugging framed byte streams (`decode`, `encode`) and a
//! demo of what framelink does over real TCP (`demo`).

mod demo;
mod stream_tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use framelink::Framing;

/// Correct, robust message passing over TCP.
#[derive(Parser, Debug)]
#[command(name = "framelink", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Streams messages over loopback TCP in random glued and split pieces and shows every
    /// framing putting them back together exactly.
    Demo(demo::DemoArgs),
    /// Reads a captured byte stream and prints its frames. Frames decoded before an error are
    /// printed; the error (what, and at which stream offset) goes to stderr with exit status 1.
    Decode {
        /// Framing spec, e.g. `length:4,max=16MiB`, `line`, `varint`, `magic:cafe,crc=crc32c`.
        #[arg(short, long, value_parser = parse_framing)]
        framing: Framing,
        /// How to print each frame.
        #[arg(long, value_enum, default_value_t = OutputFormat::Hex)]
        format: OutputFormat,
        /// Input file; `-` or nothing reads standard input.
        input: Option<PathBuf>,
    },
    /// Reads messages (one per line, or hex) and writes them as a framed byte stream.
    Encode {
        /// Framing spec, as for `decode`.
        #[arg(short, long, value_parser = parse_framing)]
        framing: Framing,
        /// How messages are given: each input line is a message (`lines`), or each line is a
        /// message in hex (`hex`).
        #[arg(long, value_enum, default_value_t = InputFormat::Lines)]
        input_format: InputFormat,
        /// Output file; standard output when not given.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Input file; `-` or nothing reads standard input.
        input: Option<PathBuf>,
    },
}

/// How `decode` prints a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One lowercase hex frame per line.
    Hex,
    /// One frame per line as text; bytes that are not printable UTF-8 are escaped (`\n`, `\xff`).
    Text,
    /// One JSON object per line: index, stream offset, length, hex and (when UTF-8) text.
    Json,
}

/// How `encode` reads messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Each line (without its `\n` or `\r\n`) is one message.
    Lines,
    /// Each line is one message written in hex; blank lines are empty messages.
    Hex,
}

fn parse_framing(text: &str) -> Result<Framing, String> {
    text.parse()
        .map_err(|e: framelink::codec::ConfigError| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Decode {
            framing,
            format,
            input,
        } => stream_tools::decode(framing, format, input.as_deref()),
        Command::Encode {
            framing,
            input_format,
            output,
            input,
        } => stream_tools::encode(framing, input_format, input.as_deref(), output.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("framelink: {e:#}");
            ExitCode::FAILURE
        }
    }
}
