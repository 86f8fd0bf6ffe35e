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
//! meshward-fleet --config FLEET.yaml [--listen IP:PORT] [--redis URL]
//! ```

mod config;
mod limits;
mod seen;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use meshward_core::fleet::{ClaimRequest, ClaimResponse, SettleRequest, SettleResponse};
use meshward_ratelimit::rls::{RateLimitRequest, RateLimitResponse};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_stream::wrappers::TcpListenerStream;
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

const USAGE: &str = "usage: meshward-fleet --config FLEET.yaml [--listen IP:PORT] [--redis URL]";
const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
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

struct Options {
    config: String,
    listen: SocketAddr,
    redis: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let (mut config, mut listen, mut redis) = (None, None, None);
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--config" => config = Some(value.clone()),
            "--listen" => listen = Some(value.parse().map_err(|_| format!("--listen: {value:?} is not IP:PORT"))?),
            "--redis" => redis = Some(value.clone()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let config = config.ok_or_else(|| format!("--config is required\n{USAGE}"))?;
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().map_err(|_| "bad default address".to_string())?;
    Ok(Options { config, listen: listen.unwrap_or(default_listen), redis })
}

/// Connects to Redis, retrying for a while at start-up (the engine and Redis start together in
/// a mesh). Later outages are the connection manager's to reconnect; calls fail meanwhile.
async fn connect(url: &str) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(1);
    let mut last = String::new();
    for _ in 0..30 {
        match ConnectionManager::new_with_config(client.clone(), settings.clone()).await {
            Ok(manager) => return Ok(manager),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("cannot reach Redis at {url}: {last}"))
}

async fn run(options: Options) -> Result<(), String> {
    let text = std::fs::read_to_string(&options.config).map_err(|e| format!("{}: {e}", options.config))?;
    let config = FleetConfig::parse(&text).map_err(|e| format!("{}: {e}", options.config))?;
    let url = options.redis.or(config.redis.clone()).unwrap_or_else(|| DEFAULT_REDIS.to_string());
    let redis = connect(&url).await?;
    let storage = AsyncRedisStorage::new_with_conn_manager(redis.clone()).await.map_err(|e| format!("Redis at {url}: {e}"))?;
    let limits = Limits::new(AsyncRateLimiter::new_with_storage(Box::new(storage)), &config.limits)?;
    let engine = Arc::new(Engine { limits, seen: SeenSet::new(redis) });
    let listener = tokio::net::TcpListener::bind(options.listen).await.map_err(|e| format!("--listen {}: {e}", options.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("meshward-fleet: listening on {address} ({} global limits, Redis {url})", config.limits.len());
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Arc::clone(&engine)))
        .add_service(SeenSetServer::new(engine))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = parse_args(&args).and_then(|options| {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(run(options))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("meshward-fleet: {message}");
            ExitCode::FAILURE
        }
    }
}
