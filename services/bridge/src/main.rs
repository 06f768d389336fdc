use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    kappa_runtime::host::<kappa_bridge::Bridge>().await
}
