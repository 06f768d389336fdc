//! `kappa token new`: a fresh bearer token and the line that grants it roles in a service's
//! `--auth-tokens` file. The file holds only the token's SHA-256, so the token itself is shown
//! (or written) once, here.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kappa_runtime::auth::{Roles, token_digest};
use rand::RngCore as _;

use crate::secret_file::create_new;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token for NAME: prints the token and the `NAME ROLES SHA256` line for --auth-tokens.
    New {
        /// The principal's name, as logs and records will show it (letters, digits, . _ - @ :).
        name: String,
        /// Comma-separated roles: read, infer, write, train, admin.
        #[arg(long, value_parser = Roles::parse)]
        roles: Roles,
        /// Write the token to this file (created with mode 0600) instead of printing it; only the
        /// --auth-tokens line goes to standard output, so `>> tokens.txt` collects it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':')),
        "{name:?} is not a principal name: use 1-128 letters, digits, '.', '_', '-', '@' or ':'"
    );
    Ok(())
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let TokenCommand::New { name, roles, out } = args.command;
    check_name(&name)?;
    let mut secret = [0_u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut secret);
    let token = format!("kappa_{}", hex::encode(secret));
    let line = format!("{name} {roles} {}", token_digest(&token));
    match out {
        Some(path) => {
            create_new(&path, format!("{token}\n").as_bytes(), 0o600)?;
            println!("{line}");
        }
        None => {
            eprintln!("# the token for {name} (shown once; give it to the client as --token-file or KAPPA_TOKEN):");
            println!("{token}");
            eprintln!("# the line for the services' --auth-tokens file:");
            println!("{line}");
        }
    }
    Ok(())
}
