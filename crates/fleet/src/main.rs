//! `meshward-fleet`: the state every sidecar of a service shares, in one small gRPC service
//! reached through an Envoy cluster (HTTP/2):
//!
//! - `envoy.service.ratelimit.v3.RateLimitService` for `scope: global` rate-limit rules, counted
//!   by Limitador on Redis ([`limits`]);
//! - `meshward.fleet.v1.SeenSet`, the webhook filter's replay set on the same Redis ([`seen`]).
//!
//! Any number of engines may serve the same Redis: they keep no state of their own.
//!
//! ```text
//! meshward-fleet --config FLEET.yaml [--listen IP:PORT] [--redis URL] [--redis-password-file FILE]
//!                [--redis-ca-file FILE] [--redis-cert-file FILE --redis-key-file FILE]
//! ```
//!
//! It serves `grpc.health.v1.Health` too (SERVING while Redis answers), and on SIGTERM stops
//! taking calls and finishes the ones in flight.

mod config;
mod limits;
mod seen;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use limitador::storage::redis::AsyncRedisStorage;
use clap::Parser;
use limitador::AsyncRateLimiter;
use meshward_core::fleet::{ClaimRequest, ClaimResponse, SettleRequest, SettleResponse, SEEN_SET_SERVICE};
use meshward_ratelimit::rls::{RateLimitRequest, RateLimitResponse};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use config::FleetConfig;
use limits::Limits;
use seen::SeenSet;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.RateLimitService.rs"));
    include!(concat!(env!("OUT_DIR"), "/meshward.fleet.v1.SeenSet.rs"));
}
use generated::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use generated::seen_set_server::{SeenSet as SeenSetService, SeenSetServer};

const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

struct Engine {
    limits: Limits,
    seen: SeenSet,
}

#[tonic::async_trait]
impl RateLimitService for Arc<Engine> {
    async fn should_rate_limit(&self, request: Request<RateLimitRequest>) -> Result<Response<RateLimitResponse>, Status> {
        let answer = self.limits.should_rate_limit(request.into_inner()).await;
        if let Err(status) = &answer {
            eprintln!("meshward-fleet: ShouldRateLimit: {}", status.message());
        }
        answer.map(Response::new)
    }
}

#[tonic::async_trait]
impl SeenSetService for Arc<Engine> {
    async fn claim(&self, request: Request<ClaimRequest>) -> Result<Response<ClaimResponse>, Status> {
        self.seen.claim(request.into_inner()).await.map(Response::new)
    }

    async fn settle(&self, request: Request<SettleRequest>) -> Result<Response<SettleResponse>, Status> {
        self.seen.settle(request.into_inner()).await.map(Response::new)
    }
}

/// `meshward-fleet`: the state every sidecar of a service shares (global rate limits, the
/// seen-set of webhook deliveries and idempotency keys), on Redis.
#[derive(Parser, Debug)]
#[command(name = "meshward-fleet", version, about, long_about = None)]
struct Options {
    /// The engine's configuration (YAML): the global limits, and where Redis is.
    #[arg(long, value_name = "FLEET.yaml")]
    config: PathBuf,
    /// Where to serve gRPC (the sidecars' cluster points here).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Redis URL (redis://HOST:PORT/DB); overrides the configuration's `redis`.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// A file holding the Redis password (a mounted secret); never given on the command line.
    #[arg(long, value_name = "FILE")]
    redis_password_file: Option<PathBuf>,
    /// The Redis ACL user the password belongs to.
    #[arg(long, value_name = "NAME")]
    redis_username: Option<String>,
    /// TLS to Redis (with a rediss:// URL): the CA certificates (PEM) to trust instead of the
    /// system's.
    #[arg(long, value_name = "FILE")]
    redis_ca_file: Option<PathBuf>,
    /// TLS client certificate (PEM) for Redis servers that require one (with --redis-key-file).
    #[arg(long, value_name = "FILE", requires = "redis_key_file")]
    redis_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "redis_cert_file")]
    redis_key_file: Option<PathBuf>,
    /// At start: how long to keep trying to reach Redis before giving up (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    redis_wait_seconds: u64,
    /// After SIGTERM or SIGINT: how long calls in flight may take to finish (seconds). The
    /// health service says NOT_SERVING from the signal on.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    drain_seconds: u64,
    /// When Redis comes back without its data (a restart without persistence): how long claims
    /// are refused while sidecars record again the outcomes they hold (they retry at least every
    /// 5 s).
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    recovery_seconds: u64,
}

fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// The Redis client: where Redis is, the credentials from their file, and TLS (`rediss://`)
/// with the certificates from theirs.
fn redis_client(options: &Options, url: &str) -> Result<redis::Client, String> {
    let tls = url.starts_with("rediss://");
    if !tls && !url.starts_with("redis://") && !url.starts_with("redis+unix://") && !url.starts_with("unix://") {
        return Err(format!("--redis {url}: give a redis://, rediss:// (TLS) or unix:// URL"));
    }
    let tls_files = options.redis_ca_file.is_some() || options.redis_cert_file.is_some();
    if tls_files && !tls {
        return Err(format!("--redis {url}: --redis-ca-file and --redis-cert-file are for TLS: give a rediss:// URL"));
    }
    let info = redis_connection(options, url)?;
    if !tls {
        return redis::Client::open(info).map_err(|e| format!("--redis {url}: {e}"));
    }
    let client_tls = match (&options.redis_cert_file, &options.redis_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_file("--redis-cert-file", cert)?,
            client_key: read_file("--redis-key-file", key)?,
        }),
        _ => None,
    };
    let root_cert = options.redis_ca_file.as_deref().map(|ca| read_file("--redis-ca-file", ca)).transpose()?;
    redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert }).map_err(|e| format!("--redis {url}: {e}"))
}

/// Where Redis is, with the credentials from their file.
fn redis_connection(options: &Options, url: &str) -> Result<redis::ConnectionInfo, String> {
    let mut info = url.into_connection_info().map_err(|e| format!("--redis {url}: {e}"))?;
    if let Some(file) = &options.redis_password_file {
        let password = String::from_utf8(read_file("--redis-password-file", file)?)
            .map_err(|_| format!("--redis-password-file {}: the password is not UTF-8", file.display()))?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(format!("--redis-password-file {}: the file is empty", file.display()));
        }
        info.redis.password = Some(password.to_string());
    }
    if let Some(user) = &options.redis_username {
        info.redis.username = Some(user.clone());
    }
    Ok(info)
}

/// Connects to Redis, retrying for `wait` at start-up (the engine and Redis start together in
/// a mesh). Later outages are the connection manager's to reconnect; calls fail meanwhile.
async fn connect(client: redis::Client, shown: &str, wait: Duration) -> Result<ConnectionManager, String> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(1);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let last = match ConnectionManager::new_with_config(client.clone(), settings.clone()).await {
            Ok(manager) => return Ok(manager),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("cannot reach Redis at {shown}: {last}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What Redis keeps across a restart, as a warning when it is less than the seen-set needs
/// (claims and stored answers are acknowledged before they are on disk otherwise).
async fn persistence_warning(redis: &mut ConnectionManager) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("persistence").query_async(redis).await.ok()?;
    let aof = info.lines().find_map(|l| l.strip_prefix("aof_enabled:")).map(str::trim);
    if aof != Some("1") {
        return Some(
            "Redis has no append-only file (appendonly no): a restart loses claims, seen deliveries and stored answers, and with them the at-most-once guarantee (README: Fleet state under faults)".into(),
        );
    }
    let fsync: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendfsync").query_async(redis).await.unwrap_or_default();
    match fsync.get(1).map(String::as_str) {
        Some("always") | None => None,
        Some(other) => Some(format!("Redis fsyncs its append-only file {other:?}, not \"always\": a crash loses what it acknowledged since the last fsync")),
    }
}

/// The health service's answer follows Redis: SERVING while it answers PING, NOT_SERVING when
/// it does not, and from the shutdown signal on.
async fn watch_redis(mut redis: ConnectionManager, health: HealthReporter, stopping: tokio::sync::watch::Receiver<bool>) {
    let mut was_up = true;
    loop {
        let up = !*stopping.borrow() && redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok();
        if up != was_up {
            eprintln!("meshward-fleet: Redis {}", if up { "answers again: SERVING" } else { "does not answer: NOT_SERVING" });
        }
        let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in ["", SEEN_SET_SERVICE, RLS_SERVICE] {
            health.set_service_status(service, status).await;
        }
        was_up = up;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Answers leave at once (no Nagle delay on small gRPC frames).
fn no_delay(stream: std::io::Result<tokio::net::TcpStream>) -> std::io::Result<tokio::net::TcpStream> {
    if let Ok(s) = &stream {
        let _ = s.set_nodelay(true);
    }
    stream
}

async fn shutdown_signal() -> &'static str {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

async fn run(options: Options) -> Result<(), String> {
    let path = options.config.display().to_string();
    let text = std::fs::read_to_string(&options.config).map_err(|e| format!("--config {path}: {e}"))?;
    let config = FleetConfig::parse(&text).map_err(|e| format!("--config {path}: {e}"))?;
    let url = options.redis.clone().or(config.redis.clone()).unwrap_or_else(|| DEFAULT_REDIS.to_string());
    let mut redis = connect(redis_client(&options, &url)?, &url, Duration::from_secs(options.redis_wait_seconds)).await?;
    if let Some(warning) = persistence_warning(&mut redis).await {
        eprintln!("meshward-fleet: warning: {warning}");
    }
    let storage = AsyncRedisStorage::new_with_conn_manager(redis.clone()).await.map_err(|e| format!("Redis at {url}: {e}"))?;
    let limits = Limits::new(AsyncRateLimiter::new_with_storage(Box::new(storage)), &config.limits)?;
    let seen = SeenSet::new(redis.clone(), Duration::from_secs(options.recovery_seconds));
    seen.start().await?;
    let engine = Arc::new(Engine { limits, seen });
    let listener = tokio::net::TcpListener::bind(options.listen).await.map_err(|e| format!("--listen {}: {e}", options.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(watch_redis(redis, health, stopping.clone()));
    eprintln!("meshward-fleet: listening on {address} ({} global limits, Redis {url})", config.limits.len());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(Arc::clone(&engine)))
        .add_service(SeenSetServer::new(engine))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener).map(no_delay), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let signal = tokio::select! {
        served = &mut server => return served.map_err(|e| format!("gRPC server: {e}")),
        signal = shutdown_signal() => signal,
    };
    // Stop taking calls, finish the ones in flight (bounded), then exit.
    let _ = stopping_tx.send(true);
    eprintln!("meshward-fleet: {signal}: NOT_SERVING, finishing calls in flight (at most {} s)", options.drain_seconds);
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(options.drain_seconds), server).await {
        Ok(served) => served.map_err(|e| format!("gRPC server: {e}"))?,
        Err(_) => eprintln!("meshward-fleet: calls still in flight after {} s: exiting", options.drain_seconds),
    }
    eprintln!("meshward-fleet: stopped");
    Ok(())
}

fn main() -> ExitCode {
    let options = Options::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(run(options)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("meshward-fleet: {message}");
            ExitCode::FAILURE
        }
    }
}
