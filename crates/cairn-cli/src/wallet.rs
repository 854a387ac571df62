//! `cairn wallet …`: keys in an encrypted keystore, balances and transfers.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_client::{Client, keystore::Keystore};
use cairn_types::{Address, Amount, Receipt, Transfer, Tx, TxBody, TxStatus};
use clap::{Args, Subcommand};

use crate::keys::{KeyArgs, default_keystore, password, read_seed_file};

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Create a key.
    New(NameArgs),
    /// Import a key from a file holding its hex seed.
    Import(ImportArgs),
    /// List keys.
    List(KeystoreArg),
    /// Show an account's balance (a key name or an address).
    Balance(BalanceArgs),
    /// Send CRN.
    Send(SendArgs),
}

#[derive(Debug, Args)]
pub(crate) struct KeystoreArg {
    /// The keystore directory.
    #[arg(long, env = "CAIRN_KEYSTORE", default_value_os_t = default_keystore())]
    keystore: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// Key name.
    name: String,
    #[command(flatten)]
    ks: KeystoreArg,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Key name.
    name: String,
    /// File with the hex seed.
    #[arg(long)]
    seed_file: std::path::PathBuf,
    #[command(flatten)]
    ks: KeystoreArg,
}

#[derive(Debug, Args)]
pub(crate) struct BalanceArgs {
    /// Key name or address.
    who: String,
    /// Node API.
    #[arg(long, env = "CAIRN_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    #[command(flatten)]
    ks: KeystoreArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Recipient address.
    to: Address,
    /// Amount, e.g. "2.5 CRN".
    amount: Amount,
    #[command(flatten)]
    key: KeyArgs,
    /// Node API.
    #[arg(long, env = "CAIRN_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: WalletCommand) -> Result<()> {
    match cmd {
        WalletCommand::New(a) => {
            let ks = Keystore::open(&a.ks.keystore)?;
            let pw = password("new password: ")?;
            if std::env::var("CAIRN_PASSWORD").is_err() && password("repeat password: ")? != pw {
                bail!("the passwords differ");
            }
            let key = ks.create(&a.name, &pw)?;
            println!("{} {}", a.name, key.address());
            Ok(())
        }
        WalletCommand::Import(a) => {
            let key = read_seed_file(&a.seed_file)?;
            let ks = Keystore::open(&a.ks.keystore)?;
            ks.import(&a.name, &key, &password("password for the imported key: ")?)?;
            println!("{} {}", a.name, key.address());
            Ok(())
        }
        WalletCommand::List(a) => {
            for (name, addr) in Keystore::open(&a.keystore)?.list()? {
                println!("{name:<20} {addr}");
            }
            Ok(())
        }
        WalletCommand::Balance(a) => {
            let address: Address = match a.who.parse() {
                Ok(addr) => addr,
                Err(_) => Keystore::open(&a.ks.keystore)?
                    .address(&a.who)
                    .with_context(|| format!("{:?} is neither an address nor a key name", a.who))?,
            };
            let acct = crate::runtime()?.block_on(Client::new(&a.api).account(&address))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&acct)?);
            } else {
                println!("{address}\n  balance {}\n  nonce   {}", acct.balance, acct.nonce);
            }
            Ok(())
        }
        WalletCommand::Send(a) => {
            let key = a.key.load()?;
            let client = Client::new(&a.api);
            crate::runtime()?.block_on(async {
                let params = client.params().await?;
                let fee: Amount = serde_json::from_value(params["min_tx_fee"].clone())?;
                let chain = client.status().await?.chain_id;
                let acct = client.account(&key.address()).await?;
                let total = a.amount.checked_add(fee).context("amount overflows")?;
                if acct.balance < total {
                    bail!(
                        "{} has {}; sending {} costs {total} with the fee",
                        key.address(),
                        acct.balance,
                        a.amount
                    );
                }
                let tx = Tx::sign(
                    &key,
                    &chain,
                    acct.next_nonce,
                    fee,
                    TxBody::Transfer(Transfer { to: a.to, amount: a.amount }),
                );
                let hash = client.submit(&tx).await?;
                let (height, receipt) = client.wait_for(&hash, Duration::from_secs(60)).await?;
                match receipt {
                    Receipt::Tx { status: TxStatus::Ok, .. } => {
                        if a.json {
                            println!("{}", serde_json::json!({ "hash": hash, "height": height }));
                        } else {
                            println!("sent {} to {} in block {height} (tx {hash})", a.amount, a.to);
                        }
                        Ok(())
                    }
                    Receipt::Tx { status, .. } => bail!("the transfer failed: {status:?}"),
                    Receipt::EndBlock { .. } => bail!("unexpected receipt"),
                }
            })
        }
    }
}
