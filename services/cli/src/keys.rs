//! `kappa keys new`: an Ed25519 key pair for signing models. The private key goes to whoever
//! publishes (the trainer's --signing-key, `kappa models publish --signing-key`); the public key
//! to whoever serves (the predictor's and registry's --trusted-keys, a file or a directory).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kappa_model::signing::ModelSigner;

use crate::secret_file::create_new;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub.pem (SPKI PEM) into DIR.
    New {
        /// Directory for the two files (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// File name stem of the pair.
        #[arg(long, default_value = "kappa-signing")]
        name: String,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let KeysCommand::New { out, name } = args.command;
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
        "--name {name:?}: use letters, digits, '.', '_' and '-'"
    );
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let signer = ModelSigner::generate();
    let private = out.join(format!("{name}.key"));
    let public = out.join(format!("{name}.pub.pem"));
    create_new(&private, signer.private_pem()?.as_bytes(), 0o600)?;
    create_new(&public, signer.public_pem()?.as_bytes(), 0o644)?;
    println!(
        "key {} written: {} (private: keep it secret) and {} (public: give it to --trusted-keys)",
        signer.id(),
        private.display(),
        public.display()
    );
    Ok(())
}
