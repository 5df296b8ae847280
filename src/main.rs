//! The `ringkv` binary: parses arguments and hands over to `ringkv::cli`.

fn main() -> std::process::ExitCode {
    ringkv::cli::main()
}
