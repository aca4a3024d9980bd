//! The ledger's hand-over during a graceful upgrade (embedded mode).
//!
//! In embedded mode the balances, holds, quota spend and rate-limit windows live in the
//! process's memory. During an upgrade two processes serve at once: the old one keeps accepting
//! for a few seconds after it handed its listeners over (Pingora's close timeout) and finishes
//! its calls in flight, the new one serves from the moment it has the listeners. Two sets of
//! books would spend the same credit twice, so there is only ever one:
//!
//! 1. The new process (`run --upgrade`) listens on `<upgrade_sock>.ledger` before it asks for
//!    the listeners.
//! 2. The old process, on SIGQUIT and before it hands the listeners over, freezes its books,
//!    sends them (and its rate-limit windows) to the new process and waits for its
//!    acknowledgement. From then on every ledger and rate-limit operation of the old process
//!    (holds, settlements, credits applied by its admin API, balance reads) is forwarded to the
//!    new process over that connection and answered from the one set of books.
//! 3. The new process installs the books before any of its services start.
//!
//! The records themselves (usage records, journal entries) are still written by whichever
//! process served the call, to the same store; only the in-memory state moves. If no new
//! process answers (an old binary, a failed start), the old process keeps its books and the
//! new one starts from the store, as before this hand-over existed; both say so in the log.
//! Cluster mode needs none of this: Redis holds the shared state.

use crate::billing::ledger::{Account, BalanceView, Ledger, Refusal, Reservation, Settlement};
use crate::tenancy::limits::{Limited, Limits, Scope};
use crate::tenancy::{KeyId, TenantId};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The new process's first line on the connection.
const READY: &str = "tollgate-ledger-handover 1";

/// The socket of the hand-over, next to Pingora's upgrade socket.
pub fn socket_path(upgrade_sock: &str) -> PathBuf {
    PathBuf::from(format!("{upgrade_sock}.ledger"))
}

/// What the old process sends and asks, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Books(
        crate::billing::ledger::BooksState,
        crate::tenancy::limits::WindowsState,
    ),
    Reserve {
        key: KeyId,
        amount: i64,
    },
    Settle {
        tenant: TenantId,
        amount: i64,
        accounts: Vec<Account>,
        actual: i64,
        key: KeyId,
    },
    Apply {
        tenant: TenantId,
        amount: i64,
    },
    Balance(TenantId),
    AccountSpend(TenantId, Account),
    RestoreSpend(TenantId, Vec<(Account, i64)>),
    Admit {
        now_ms: u64,
        subjects: Vec<(Scope, i64, Limits)>,
    },
    Tokens {
        now_ms: u64,
        subjects: Vec<(Scope, i64, Limits)>,
        tokens: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Done,
    Reserved(Result<i64, RefusalWire>),
    Settled(Settlement),
    Balance(BalanceView),
    Spend(i64, i64),
    Admitted(Result<(), Limited>),
    /// The key is unknown to the new process (its snapshot is older): the old process decides.
    UnknownKey,
}

/// A refusal on the wire (its account is named, not a `&'static str`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RefusalWire {
    Balance {
        available: i64,
        needed: i64,
    },
    Quota {
        account: String,
        remaining: i64,
        needed: i64,
    },
    Unavailable,
    Backlog,
}

impl From<Refusal> for RefusalWire {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Balance { available, needed } => RefusalWire::Balance { available, needed },
            Refusal::Quota {
                account,
                remaining,
                needed,
            } => RefusalWire::Quota {
                account: account.to_string(),
                remaining,
                needed,
            },
            Refusal::Unavailable => RefusalWire::Unavailable,
            Refusal::Backlog => RefusalWire::Backlog,
        }
    }
}

impl From<RefusalWire> for Refusal {
    fn from(r: RefusalWire) -> Self {
        match r {
            RefusalWire::Balance { available, needed } => Refusal::Balance { available, needed },
            RefusalWire::Quota {
                account,
                remaining,
                needed,
            } => Refusal::Quota {
                account: Account::describe(&account),
                remaining,
                needed,
            },
            RefusalWire::Unavailable => Refusal::Unavailable,
            RefusalWire::Backlog => Refusal::Backlog,
        }
    }
}

impl crate::tenancy::limits::Forward for Remote {
    fn admit(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)]) -> Option<Result<(), Limited>> {
        match self.call(&Request::Admit {
            now_ms,
            subjects: subjects.to_vec(),
        }) {
            Ok(Reply::Admitted(r)) => Some(r),
            other => {
                tracing::warn!(result = ?other, "upgrade: rate-limit hand-over unreachable");
                None
            }
        }
    }

    fn tokens(&self, now_ms: u64, subjects: &[(Scope, i64, Limits)], tokens: u64) {
        let _ = self.call(&Request::Tokens {
            now_ms,
            subjects: subjects.to_vec(),
            tokens,
        });
    }
}

/// The old process's end: every operation is one request and one reply, in turn.
#[derive(Debug)]
pub struct Remote {
    conn: Mutex<(BufReader<UnixStream>, UnixStream)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("hand-over socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("hand-over protocol: {0}")]
    Protocol(String),
}

impl Remote {
    /// Connects and waits for the new process to say it is ready (it accepts only once its
    /// state is built, so the old one does not freeze its books while the new one starts).
    fn connect(path: &Path) -> Result<Remote, HandoverError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut hello = String::new();
        reader.read_line(&mut hello)?;
        if hello.trim_end() != READY {
            return Err(HandoverError::Protocol(format!(
                "unexpected greeting {hello:?}"
            )));
        }
        Ok(Remote {
            conn: Mutex::new((reader, stream)),
        })
    }

    /// One round trip (blocking: a few tens of microseconds on the local socket, only while the
    /// old process drains).
    pub(crate) fn call(&self, req: &Request) -> Result<Reply, HandoverError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (reader, writer) = &mut *conn;
        let mut line =
            serde_json::to_vec(req).map_err(|e| HandoverError::Protocol(e.to_string()))?;
        line.push(b'\n');
        writer.write_all(&line)?;
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(HandoverError::Protocol(
                "the new process closed the hand-over".into(),
            ));
        }
        serde_json::from_str(&answer).map_err(|e| HandoverError::Protocol(e.to_string()))
    }
}

/// The old process, on SIGQUIT: connect to the new process, freeze and send the books and
/// rate-limit windows, and forward everything after. Returns whether the hand-over happened.
pub fn give(app: &crate::app::App, upgrade_sock: &str) -> bool {
    let path = socket_path(upgrade_sock);
    // systemd's reload signals the old process first and starts the new one after: wait for
    // it as long as Pingora waits to hand the listeners over (5 s).
    let mut remote = None;
    for _ in 0..250 {
        match Remote::connect(&path) {
            Ok(r) => {
                remote = Some(r);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let Some(remote) = remote else {
        tracing::warn!(socket = %path.display(), "upgrade: no new process took the ledger hand-over; this process keeps its books while it drains (balances may be spent twice until it exits)");
        return false;
    };
    let remote = Arc::new(remote);
    let result = app.ledger.freeze(remote.clone(), |books| {
        app.limiter.freeze(
            remote.clone(),
            |windows| remote.call(&Request::Books(books, windows)),
            |r| matches!(r, Ok(Reply::Done)),
        )
    });
    match result {
        Ok(Reply::Done) => {
            tracing::info!("upgrade: ledger and rate limits handed over to the new process; this process forwards to it while it drains");
            true
        }
        other => {
            tracing::error!(result = ?other, "upgrade: ledger hand-over failed");
            false
        }
    }
}

/// The new process: the bound hand-over socket, waiting for the old process.
pub struct Taker {
    listener: UnixListener,
    path: PathBuf,
}

impl Taker {
    /// Bind the hand-over socket (before asking for the listeners).
    pub fn bind(upgrade_sock: &str) -> Result<Taker, HandoverError> {
        let path = socket_path(upgrade_sock);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(Taker { listener, path })
    }

    /// Serve the old process on a thread of its own: install its books when they arrive (the
    /// returned channel says when), then answer what it forwards until it exits.
    pub fn serve(self, app: Arc<crate::app::App>) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("ledger-handover".into())
            .spawn(move || {
                // A connection that ends before the books arrived (an old process that gave up
                // waiting) is followed by the next one.
                let mut installed = false;
                while !installed {
                    let stream = match self.listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "upgrade: hand-over accept failed");
                            return;
                        }
                    };
                    if let Err(e) = serve_conn(&app, stream, &tx, &mut installed) {
                        tracing::warn!(error = %e, "upgrade: hand-over connection ended");
                    }
                }
                let _ = std::fs::remove_file(&self.path);
                tracing::info!("upgrade: the old process finished; the hand-over is closed");
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "upgrade: cannot start the hand-over thread");
        }
        rx
    }
}

fn serve_conn(
    app: &crate::app::App,
    stream: UnixStream,
    tx: &std::sync::mpsc::Sender<()>,
    installed: &mut bool,
) -> Result<(), HandoverError> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    writer.write_all(format!("{READY}\n").as_bytes())?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let req: Request =
            serde_json::from_str(&line).map_err(|e| HandoverError::Protocol(e.to_string()))?;
        *installed |= matches!(req, Request::Books(..));
        let reply = answer(app, req, tx);
        let mut out =
            serde_json::to_vec(&reply).map_err(|e| HandoverError::Protocol(e.to_string()))?;
        out.push(b'\n');
        writer.write_all(&out)?;
    }
}

/// The new process answers one forwarded operation from its books.
fn answer(app: &crate::app::App, req: Request, installed: &std::sync::mpsc::Sender<()>) -> Reply {
    let ledger: &Ledger = &app.ledger;
    let key = |id: KeyId| app.keys.by_id(id);
    match req {
        Request::Books(books, windows) => {
            ledger.install(books);
            app.limiter.install(windows);
            let _ = installed.send(());
            Reply::Done
        }
        Request::Reserve { key: id, amount } => match key(id) {
            Some(k) => Reply::Reserved(
                ledger
                    .reserve(&k, amount)
                    .map(|r| r.amount)
                    .map_err(RefusalWire::from),
            ),
            None => Reply::UnknownKey,
        },
        Request::Settle {
            tenant,
            amount,
            accounts,
            actual,
            key: id,
        } => match key(id) {
            Some(k) => Reply::Settled(ledger.settle(
                Reservation::from_parts(tenant, amount, accounts),
                actual,
                &k,
            )),
            None => Reply::UnknownKey,
        },
        Request::Apply { tenant, amount } => {
            ledger.apply_credit(tenant, amount);
            Reply::Done
        }
        Request::Balance(t) => Reply::Balance(ledger.balance(t)),
        Request::AccountSpend(t, a) => {
            let (s, r) = ledger.account_spend(t, a);
            Reply::Spend(s, r)
        }
        Request::RestoreSpend(t, spend) => {
            ledger.restore_spend(t, &spend);
            Reply::Done
        }
        Request::Admit { now_ms, subjects } => {
            Reply::Admitted(app.limiter.admit(now_ms, &subjects))
        }
        Request::Tokens {
            now_ms,
            subjects,
            tokens,
        } => {
            app.limiter.record_tokens(now_ms, &subjects, tokens);
            Reply::Done
        }
    }
}
