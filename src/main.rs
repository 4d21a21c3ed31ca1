//! The `custody` binary: parses the command line and hands it to the CLI
//! library.

fn main() -> std::process::ExitCode {
    custody_cli::main()
}
