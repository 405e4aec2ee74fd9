//! The `interceptor` command line: run the agent, inspect it, detach it.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    config::Config,
    control::{AgentHealth, query_health},
    ebpf::{LinkState, current_generation, detach, link_states, read_counters},
};

pub const DEFAULT_CONFIG: &str = "/etc/interceptor/interceptor.toml";

#[derive(Parser, Debug)]
#[command(
    name = "interceptor",
    version,
    about = "Transparent, auditing interceptor for MCP servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent in the foreground.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show attached programs, protected services, kernel counters and agent health.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove every program and pin of this instance (connections are no longer intercepted).
    Detach {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("interceptor: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = load(&config)?;
            init_logging(&cfg.agent.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(crate::agent::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let cfg = load(&config)?;
            let st = status(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { config } => {
            let cfg = load(&config)?;
            let root = cfg.agent.pin_root();
            if detach(&root)? {
                println!("detached: removed {}", root.display());
            } else {
                println!("nothing to detach: {} does not exist", root.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let cfg = load(&config)?;
            println!(
                "{}: ok ({} service(s), instance {:?})",
                config.display(),
                cfg.services.len(),
                cfg.agent.instance
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INTERCEPTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        b.json().flatten_event(true).with_current_span(false).init();
    } else {
        b.init();
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub instance: String,
    pub pin_dir: Option<String>,
    pub programs: Vec<LinkState>,
    pub agent: AgentHealth,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub port: u16,
    pub address: Option<String>,
    pub steered: u64,
    pub refused: u64,
    pub local_redirects: u64,
    pub upstream: u64,
}

pub fn status(cfg: &Config) -> Result<Status> {
    let generation = current_generation(&cfg.agent.pin_root());
    let counters = match &generation {
        Some(g) => read_counters(g, cfg.services.len()).ok(),
        None => None,
    };
    let services = cfg
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let c = counters
                .as_ref()
                .and_then(|c| c.get(i).copied())
                .unwrap_or_default();
            ServiceStatus {
                name: s.name.clone(),
                port: s.port,
                address: s.address.map(|a| a.to_string()),
                steered: c.steered,
                refused: c.refused,
                local_redirects: c.local_redirects,
                upstream: c.upstream,
            }
        })
        .collect();
    Ok(Status {
        instance: cfg.agent.instance.clone(),
        pin_dir: generation.as_ref().map(|g| g.display().to_string()),
        programs: link_states(generation.as_deref()),
        agent: query_health(&cfg.agent.control_socket()),
        services,
    })
}

fn print_status(st: &Status) {
    println!("instance: {}", st.instance);
    println!(
        "pins:     {}",
        st.pin_dir
            .as_deref()
            .unwrap_or("(none: programs not attached)")
    );
    if st.agent.running {
        println!(
            "agent:    running, pid {}, up {}s, {} active / {} total connections",
            st.agent.pid.unwrap_or(0),
            st.agent.uptime_s.unwrap_or(0),
            st.agent.active_connections.unwrap_or(0),
            st.agent.total_connections.unwrap_or(0)
        );
    } else {
        println!(
            "agent:    NOT RUNNING (protected ports refuse connections while programs are attached)"
        );
    }
    println!("programs:");
    for p in &st.programs {
        match (p.attached, p.link_id, p.program_id) {
            (true, Some(l), Some(id)) => {
                println!("  {:<14} attached (link {l}, prog {id})", p.name)
            }
            _ => println!("  {:<14} NOT ATTACHED", p.name),
        }
    }
    println!("services:       steered  refused  local  upstream");
    for s in &st.services {
        let addr = s.address.clone().unwrap_or_else(|| "*".into());
        println!(
            "  {:<12} {addr}:{}  {:>7}  {:>7}  {:>5}  {:>8}",
            s.name, s.port, s.steered, s.refused, s.local_redirects, s.upstream
        );
    }
}
