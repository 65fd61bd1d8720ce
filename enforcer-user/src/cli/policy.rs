//! `enforcer policy`: make keys, sign, verify, lint and show policy packs,
//! and print the pack JSON Schema. A thin layer over `policy::tools`.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context as _;
use policy::signing::read_public_key;
use policy::tools;

/// Work with signed policy packs (keys, signatures, checks).
///
/// Example: enforcer policy keygen --out k && enforcer policy sign pack.json --key k && enforcer policy verify pack.json --pubkey k.pub
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// The policy subcommand.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `enforcer policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Make an Ed25519 signing key: NAME (private, PKCS#8 PEM, mode 0600) and
    /// NAME.pub (public, PEM). Prints the key id. Never overwrites a file.
    ///
    /// Example: enforcer policy keygen --out policy-key
    Keygen {
        /// Path of the private key to write; the public key goes to NAME.pub.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// Sign a pack: checks it, stamps `issuedAt` with the current time if it
    /// has none (rewriting the file), then writes PACK.sig (base64 Ed25519
    /// signature over the file's exact bytes).
    ///
    /// Example: enforcer policy sign policy.pack.json --key policy-key
    Sign {
        /// The pack file.
        #[arg(value_name = "PACK")]
        pack: PathBuf,
        /// The private key written by `keygen`.
        #[arg(long, value_name = "NAME")]
        key: PathBuf,
    },
    /// Verify a pack's signature with one or more trusted public keys
    /// (several: key rotation), then check the pack. Prints the key id.
    ///
    /// Example: enforcer policy verify policy.pack.json --pubkey policy-key.pub
    Verify {
        /// The pack file.
        #[arg(value_name = "PACK")]
        pack: PathBuf,
        /// A trusted public key (repeatable).
        #[arg(long, value_name = "NAME.pub", required = true)]
        pubkey: Vec<PathBuf>,
        /// The signature file (default: PACK.sig).
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
    },
    /// Check a pack: unknown or misspelt fields, values, lane names,
    /// patterns, URLs; every problem names its JSON path. Warnings (weakened
    /// checks, expiry) do not fail.
    ///
    /// Example: enforcer policy lint policy.pack.json
    Lint {
        /// The pack file.
        #[arg(value_name = "PACK")]
        pack: PathBuf,
    },
    /// Summarise a pack: lanes, allowlist and direct entries with their
    /// expiry times, limits. Does not check the signature.
    ///
    /// Example: enforcer policy show policy.pack.json
    Show {
        /// The pack file.
        #[arg(value_name = "PACK")]
        pack: PathBuf,
    },
    // The help text is `SuggestArgs`' doc comment.
    Suggest(super::policy_suggest::SuggestArgs),
    /// Print the JSON Schema of policy packs (generated from the code).
    ///
    /// Example: enforcer policy schema > schema.json
    Schema,
}

/// Runs `enforcer policy ...`.
pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match args.command {
        PolicyCommand::Keygen { out } => {
            let id = tools::keygen(&out)?;
            println!("wrote private key {} (mode 0600)", out.display());
            println!(
                "wrote public key  {}",
                policy::signing::public_key_path(&out).display()
            );
            println!("key id {id}");
        }
        PolicyCommand::Sign { pack, key } => {
            let r = tools::sign_pack(&pack, &key, now)?;
            if let Some(ts) = &r.stamped {
                println!("stamped issuedAt {ts} into {}", pack.display());
            }
            println!(
                "signed {} (version {}) with key id {}",
                pack.display(),
                r.version,
                r.key_id
            );
            println!("wrote {}", r.sig_path.display());
            if let Some(exp) = &r.expires_at {
                println!("pack expires {exp}");
            }
            println!("sha256 {}", r.sha256);
        }
        PolicyCommand::Verify { pack, pubkey, sig } => {
            let keys = pubkey
                .iter()
                .map(|p| read_public_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let r = tools::verify_pack(&pack, &keys, sig.as_deref(), now)
                .with_context(|| format!("verifying {}", pack.display()))?;
            println!(
                "signature OK: {} (version {}) signed by key id {}",
                pack.display(),
                r.policy.version,
                r.key_id
            );
            println!("sha256 {}", r.sha256);
            for w in &r.warnings {
                println!("warning: {w}");
            }
        }
        PolicyCommand::Lint { pack } => {
            let r = tools::lint_pack(&pack, now)?;
            for w in &r.warnings {
                println!("warning: {w}");
            }
            println!("{}: OK (version {})", pack.display(), r.policy.version);
        }
        PolicyCommand::Show { pack } => {
            print!("{}", tools::show_pack(&pack, now)?);
        }
        PolicyCommand::Suggest(args) => super::policy_suggest::run(args)?,
        PolicyCommand::Schema => {
            print!("{}", tools::schema_json());
        }
    }
    Ok(())
}
