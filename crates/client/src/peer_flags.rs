//! The client flags of a server that calls another Kappa service: the CA, its own certificate
//! and key, a token file and the plaintext-token permission, under a prefix naming the peer
//! (`--registry-tls-ca` for the trainer, `--mesh-tls-ca` for the console), so every server that
//! is also a client takes the same flags and builds the same [`ClientSecurity`].

use std::{marker::PhantomData, path::PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use crate::ClientSecurity;

/// Names one peer's flags.
pub trait Peer {
    /// Flag prefix: `registry` makes `--registry-tls-ca`.
    const FLAG: &'static str;
    /// Environment prefix: `REGISTRY` makes `KAPPA_REGISTRY_TLS_CA`.
    const ENV: &'static str;
    /// Who is called, in help text: "the registry".
    const CALLED: &'static str;
    /// Help of the token file: whose token it is and the roles it needs.
    const TOKEN_HELP: &'static str;
}

/// The flags of calls to `P`.
#[derive(Debug, Clone)]
pub struct PeerSecurityArgs<P> {
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub allow_plaintext_token: bool,
    peer: PhantomData<P>,
}

impl<P: Peer> PeerSecurityArgs<P> {
    /// The flag `--{FLAG}-{name}`, which is also its id.
    fn flag(name: &str) -> String {
        format!("{}-{name}", P::FLAG)
    }

    fn env(name: &str) -> String {
        format!("KAPPA_{}_{name}", P::ENV)
    }

    /// The security of calls to the peer, files read now.
    pub fn security(&self) -> Result<ClientSecurity, String> {
        let mut security = ClientSecurity::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.token_file.as_deref(),
            None,
        )
        .map_err(|e| format!("--{}/--{}: {e}", Self::flag("tls-*"), Self::flag("token-file")))?;
        security.plaintext_token = self.allow_plaintext_token;
        Ok(security)
    }
}

impl<P: Peer> Args for PeerSecurityArgs<P> {
    fn augment_args(cmd: Command) -> Command {
        let path = |name: &str, env: &str, help: String| {
            Arg::new(Self::flag(name))
                .long(Self::flag(name))
                .env(Self::env(env))
                .value_name(if name == "token-file" { "FILE" } else { "PEM" })
                .value_parser(clap::value_parser!(PathBuf))
                .help(help)
        };
        // The heading is the caller's again afterwards: the flags after these are not the peer's.
        let heading = cmd.get_next_help_heading().map(str::to_owned);
        let cmd = cmd
            .next_help_heading(format!("Calling {}", P::CALLED))
            .arg(path(
                "tls-ca",
                "TLS_CA",
                format!("PEM bundle of the CA that signed the certificates of {} (https:// URLs); the system's roots when unset", P::CALLED),
            ))
            .arg(
                path("tls-cert", "TLS_CERT", format!("This service's own PEM certificate towards {}, when it requires mutual TLS", P::CALLED))
                    .requires(Self::flag("tls-key")),
            )
            .arg(
                path("tls-key", "TLS_KEY", format!("The PEM private key of --{}", Self::flag("tls-cert")))
                    .requires(Self::flag("tls-cert")),
            )
            .arg(path("token-file", "TOKEN_FILE", P::TOKEN_HELP.to_owned()))
            .arg(
                Arg::new(Self::flag("allow-plaintext-token"))
                    .long(Self::flag("allow-plaintext-token"))
                    .env(Self::env("ALLOW_PLAINTEXT_TOKEN"))
                    .action(ArgAction::SetTrue)
                    .help(format!(
                        "Send the token over http:// URLs of {} to other machines. Without it the service refuses to start that way: anyone on the path could read the token",
                        P::CALLED
                    )),
            )
            ;
        match heading {
            Some(heading) => cmd.next_help_heading(heading),
            None => cmd.next_help_heading(clap::builder::Resettable::Reset),
        }
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<P: Peer> FromArgMatches for PeerSecurityArgs<P> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let path = |name: &str| matches.get_one::<PathBuf>(&Self::flag(name)).cloned();
        Ok(Self {
            tls_ca: path("tls-ca"),
            tls_cert: path("tls-cert"),
            tls_key: path("tls-key"),
            token_file: path("token-file"),
            allow_plaintext_token: matches.get_flag(&Self::flag("allow-plaintext-token")),
            peer: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    struct Registry;

    impl Peer for Registry {
        const FLAG: &'static str = "registry";
        const ENV: &'static str = "REGISTRY";
        const CALLED: &'static str = "the registry";
        const TOKEN_HELP: &'static str = "a token";
    }

    #[derive(Parser)]
    struct Tool {
        #[command(flatten)]
        registry: PeerSecurityArgs<Registry>,
        /// A flag of the tool's own.
        #[arg(long)]
        after: bool,
    }

    #[test]
    fn the_flags_carry_the_peers_prefix_and_a_certificate_needs_its_key() {
        let tool = Tool::try_parse_from([
            "tool",
            "--registry-tls-ca=ca.pem",
            "--registry-token-file=t",
            "--registry-allow-plaintext-token",
        ])
        .unwrap();
        assert_eq!(tool.registry.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(tool.registry.token_file, Some(PathBuf::from("t")));
        assert!(tool.registry.allow_plaintext_token && tool.registry.tls_cert.is_none());
        let refused = Tool::try_parse_from(["tool", "--registry-tls-cert=c.pem"])
            .err()
            .unwrap();
        assert!(refused.to_string().contains("--registry-tls-key"), "{refused}");
        let help = Tool::command_for_help();
        assert!(
            help.contains("KAPPA_REGISTRY_TLS_CA") && help.contains("Calling the registry"),
            "{help}"
        );
        assert!(
            help.find("--after").unwrap() < help.find("Calling the registry").unwrap(),
            "a flag after them keeps its own heading: {help}"
        );
    }

    impl Tool {
        fn command_for_help() -> String {
            use clap::CommandFactory as _;
            Self::command().render_long_help().to_string()
        }
    }
}
