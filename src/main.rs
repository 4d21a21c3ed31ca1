//! The `custody` binary: parses the command line and hands it to the CLI
//! library.

/// mimalloc: ingest allocates and frees many small strings per event on
/// every thread, where glibc's allocator spent a fifth of the HTTP workers'
/// time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    custody_cli::main()
}
