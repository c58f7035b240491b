//! `privault token new`: makes a bearer token for a principal and prints the token (to hand to
//! the service, once) and the token-file entry holding only its Argon2id hash.

use std::process::ExitCode;

use clap::Subcommand;
use privault::api::tokens::new_token;
use privault::domain::Principal;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Generate a token for PRINCIPAL; prints the token on stdout and the token-file entry on
    /// stderr.
    New {
        /// The principal, e.g. `Service::"checkout"`.
        #[arg(long)]
        principal: String,
    },
}

pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::New { principal } => {
            let principal = Principal::parse_uid(&principal)?;
            let (token, hash) = new_token().map_err(anyhow::Error::msg)?;
            println!("{}", token.as_str());
            eprintln!(
                "# add to the token file (the token itself is shown once, above):\n\
                 [[tokens]]\nprincipal = '{principal}'\nhash = \"{hash}\""
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
