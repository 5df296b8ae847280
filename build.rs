fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/ringkv.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
