//! livy-proxy: makes an Apache Livy HA set look like one stable endpoint.
//!
//! Livy in HA mode runs one active server and several passive ones, elected
//! through a Curator `LeaderLatch` in ZooKeeper. This crate watches the latch
//! ([`discovery`]) and forwards client traffic to whichever server is active
//! ([`http_proxy`]), so clients never see a redirect or a dead server.
//!
//! Modules, one concern each:
//! - [`config`]: flags, environment and TOML, each key declared once, into
//!   [`config::Config`]'s typed sections (http, tcp, discovery, admin, log,
//!   runtime);
//! - [`app`]: the whole proxy in-process: listeners, the drain, reloads;
//! - [`node`]: what a Livy server is (latch id, address);
//! - [`discovery`]: the only code that talks to ZooKeeper or probes servers;
//!   it publishes a [`discovery::LeaderView`] on a `watch` channel;
//! - [`http_proxy`]: the HTTP/1.1 and h2c reverse proxy reading that channel;
//! - [`tcp_proxy`]: the JDBC (Livy Thrift server) TCP proxy reading it too;
//! - [`listener`]: the accept loop both proxies share;
//! - [`limit`]: connection and request limits a reload can change;
//! - [`proxy_protocol`]: the client's address from a trusted load balancer's
//!   PROXY protocol header, on both listeners;
//! - [`sched`]: a checkpoint that lets the kernel end a busy worker's used-up
//!   time slice on time.

// Every public item says why it exists (house rule), checked by the compiler.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod discovery;
pub mod health;
pub mod http_proxy;
pub mod limit;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod proxy_protocol;
pub mod sched;
pub mod shard;
pub mod tcp_proxy;
pub mod tls;
