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
    /// Install as a systemd service: binary, unit, configuration skeleton, account, directories.
    Install(crate::service::InstallArgs),
    /// Remove what `install` put in place (configuration and state stay unless --purge).
    Uninstall(crate::service::UninstallArgs),
    /// Authorization policy: check, reload, explain.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The tamper-evident audit log: verify, export, search, tail, show, prune, keys.
    Audit {
        #[command(subcommand)]
        command: crate::audit::cli::AuditCommand,
    },
    /// Redact a sample (a file, or standard input) as a service's responses are redacted: the
    /// redacted sample on standard output, what was masked and why on standard error. A dry
    /// run for tuning detectors; pseudonyms are the agent's (the key in force).
    Redact {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The service whose `[services.redact]` applies; default: the only one that has it
        /// (the built-in detectors when none has).
        #[arg(long)]
        service: Option<String>,
        /// How to read the sample.
        #[arg(long, value_enum, default_value = "auto")]
        format: crate::redact::sample::SampleFormat,
        /// A random key instead of the one in force (the pseudonyms then differ from the
        /// agent's): for a host where the agent has not created its key ring yet.
        #[arg(long)]
        ephemeral_key: bool,
        /// Print one JSON report on standard output instead (output, counts, pseudonyms and,
        /// for text, each detection).
        #[arg(long)]
        json: bool,
        /// The sample (default: standard input).
        file: Option<PathBuf>,
    },
    /// Calls held for approval: list, show, approve, deny (talks to the running agent).
    Approvals {
        #[command(flatten)]
        conn: crate::approval::control::Conn,
        #[command(subcommand)]
        command: crate::approval::control::ApprovalsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate policy files (or the ones the configuration names) and print their version.
    Check {
        /// Policy files or directories; default: `auth.policy` of --config.
        files: Vec<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask the running agent to reload its policy (an invalid one is refused, the old stays).
    Reload {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show what the holder of a token may do on a service, and why.
    Explain {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        service: String,
        /// The bearer token (verified against the configured issuers).
        #[arg(long)]
        token: String,
        /// Also decide one call: its method...
        #[arg(long)]
        method: Option<String>,
        /// ...tool/prompt name or resource URI...
        #[arg(long)]
        name: Option<String>,
        /// ...and arguments (JSON object).
        #[arg(long)]
        args: Option<String>,
        #[arg(long)]
        json: bool,
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
        Command::Policy { command } => policy_command(command),
        Command::Approvals { conn, command } => crate::approval::control::cli(conn, command),
        Command::Install(args) => crate::service::install_command(args),
        Command::Uninstall(args) => crate::service::uninstall_command(args),
        Command::Audit { command } => crate::audit::cli::run(command),
        Command::Redact {
            config,
            service,
            format,
            ephemeral_key,
            json,
            file,
        } => redact_command(
            &config,
            service.as_deref(),
            format,
            ephemeral_key,
            json,
            file,
        ),
        Command::CheckConfig { config } => {
            let cfg = load(&config)?;
            // The redaction detectors compile as the agent will compile them (a pattern
            // error stops the agent at start), and custom ones that would be slow are named.
            for s in &cfg.services {
                let Some(r) = &s.redact else { continue };
                let key = crate::redact::engine::PseudonymKey::new([0; 32]);
                crate::redact::engine::Engine::new(r, key).map_err(|e| {
                    anyhow::anyhow!("{}: services.{}.redact: {e}", config.display(), s.name)
                })?;
                for c in crate::redact::engine::Engine::costly_custom_detectors(r) {
                    eprintln!("warning: services.{}.redact: {c}", s.name);
                }
            }
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

/// Largest sample `interceptor redact` reads.
const MAX_SAMPLE: u64 = 64 << 20;

fn redact_command(
    config: &std::path::Path,
    service: Option<&str>,
    format: crate::redact::sample::SampleFormat,
    ephemeral_key: bool,
    json: bool,
    file: Option<PathBuf>,
) -> Result<ExitCode> {
    use crate::redact::engine::{Engine, EngineConfig, PseudonymKey};
    use std::io::Read as _;
    let cfg = load(config)?;
    let settings = match service {
        Some(name) => {
            let s = cfg
                .services
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| anyhow::anyhow!("{}: no service {name:?}", config.display()))?;
            s.redact.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: services.{name} has no [services.redact]: its responses are not \
                     redacted (only request parameters in its records, by the built-in detectors)",
                    config.display()
                )
            })?
        }
        None => {
            let with: Vec<_> = cfg.services.iter().filter(|s| s.redact.is_some()).collect();
            match with.as_slice() {
                [] => {
                    eprintln!(
                        "no service redacts responses: the built-in detectors, default masking"
                    );
                    EngineConfig::default()
                }
                [one] => one.redact.clone().unwrap_or_default(),
                many => anyhow::bail!(
                    "{}: several services redact ({}): choose one with --service",
                    config.display(),
                    many.iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let key = if ephemeral_key {
        crate::audit::keys::random_key().context("an ephemeral pseudonym key")?
    } else {
        let ring = crate::audit::keys::KeyRing::new(&cfg.agent.pseudonym_keys());
        let ctx = || format!("agent.pseudonym_key_dir {}", ring.dir().display());
        let ids = ring.ids().with_context(ctx)?;
        let Some(id) = ids.last() else {
            anyhow::bail!(
                "{}: no pseudonym key yet (the agent creates one at its first start); \
                 --ephemeral-key redacts with a random one",
                ctx()
            );
        };
        ring.get(id).with_context(ctx)?
    };
    let engine = Engine::new(&settings, PseudonymKey::new(key))
        .map_err(|e| anyhow::anyhow!("redaction settings: {e}"))?;
    let mut input = Vec::new();
    let what = file
        .as_ref()
        .map_or_else(|| "standard input".to_string(), |f| f.display().to_string());
    let read = match &file {
        Some(f) => {
            std::fs::File::open(f).and_then(|f| f.take(MAX_SAMPLE + 1).read_to_end(&mut input))
        }
        None => std::io::stdin()
            .take(MAX_SAMPLE + 1)
            .read_to_end(&mut input),
    };
    read.with_context(|| format!("reading {what}"))?;
    if input.len() as u64 > MAX_SAMPLE {
        anyhow::bail!("{what}: larger than {MAX_SAMPLE} bytes");
    }
    let report = crate::redact::sample::redact_sample(&engine, &input, format)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", report.output);
    if !report.output.ends_with('\n') {
        println!();
    }
    let list = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let total: u64 = report.masked.values().sum();
    eprintln!(
        "{} ({}): masked {total} value(s){}{}",
        what,
        report.format,
        if total > 0 { ": " } else { "" },
        list(&report.masked)
    );
    if !report.released.is_empty() {
        eprintln!("released in clear: {}", list(&report.released));
    }
    for d in &report.detections {
        eprintln!(
            "  {}..{} {} (confidence {:.2}): {}",
            d.start, d.end, d.entity, d.confidence, d.value
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: &str) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("INTERCEPTOR_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if format == "journal" {
        match crate::journal::init(filter()) {
            Ok(()) => return,
            Err(e) => eprintln!("interceptor: no journal ({e}); logging text on stderr"),
        }
    }
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter())
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

fn policy_command(cmd: PolicyCommand) -> Result<ExitCode> {
    use crate::policy::{PolicyRequest, PolicySet, Principal};
    match cmd {
        PolicyCommand::Check { files, config } => {
            let files = if files.is_empty() {
                load(&config)?.auth.policy
            } else {
                files
            };
            if files.is_empty() {
                anyhow::bail!(
                    "no policy files given and the configuration names none (auth.policy)"
                );
            }
            match PolicySet::load(&files) {
                Ok(p) => {
                    println!(
                        "policy ok: version {} ({} file(s): {})",
                        p.version(),
                        p.files().len(),
                        p.files().join(", ")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("invalid policy:\n{e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        PolicyCommand::Reload { config } => {
            let cfg = load(&config)?;
            let answer = crate::control::request(&cfg.agent.control_socket(), "policy-reload")?;
            if answer["ok"] == true {
                println!(
                    "policy reloaded: {} -> {}",
                    answer["old_version"].as_str().unwrap_or("?"),
                    answer["new_version"].as_str().unwrap_or("?")
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "policy NOT reloaded (version {} stays in force):\n{}",
                    answer["in_force"].as_str().unwrap_or("?"),
                    answer["error"].as_str().unwrap_or("unknown error")
                );
                Ok(ExitCode::from(1))
            }
        }
        PolicyCommand::Explain {
            config,
            service,
            token,
            method,
            name,
            args,
            json,
        } => {
            let cfg = load(&config)?;
            let svc = cfg
                .services
                .iter()
                .find(|s| s.name == service)
                .ok_or_else(|| {
                    anyhow::anyhow!("no service named {service:?} in {}", config.display())
                })?;
            let sa = svc
                .auth
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("service {service:?} has no [services.auth]"))?;
            let policy = PolicySet::load(&cfg.auth.policy)
                .map_err(|e| anyhow::anyhow!("invalid policy:\n{e}"))?;
            let arguments: Option<serde_json::Value> = match &args {
                Some(a) => Some(serde_json::from_str(a).context("--args is not JSON")?),
                None => None,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let verified = rt.block_on(async {
                let v = crate::oidc::Verifier::new(cfg.auth.issuers.clone())
                    .map_err(|e| anyhow::anyhow!("auth.issuers: {e}"))?;
                v.start();
                v.verify(&token, &sa.resource)
                    .await
                    .map_err(|e| anyhow::anyhow!("token refused: {}", e.description()))
            })?;
            let who = Principal {
                subject: verified.subject.clone(),
                issuer: verified.issuer.clone(),
                client_id: verified.client_id.clone(),
                groups: verified.groups.clone(),
            };
            let explanation = policy.explain(&service, &who);
            let decision = method.as_deref().map(|m| {
                policy.decide(&PolicyRequest {
                    service: &service,
                    who: &who,
                    method: m,
                    name: name.as_deref(),
                    arguments: arguments.as_ref(),
                })
            });
            // Approval rules for the service, and whether the decided call would be held.
            let approval_rules: Vec<_> = policy
                .approval_rules()
                .for_service(&service)
                .map(|r| r.explain())
                .collect();
            let held = match (&decision, method.as_deref()) {
                (Some(d), Some(m)) if d.allowed => policy
                    .approval_rules()
                    .find(
                        &service,
                        d.role.as_deref(),
                        m,
                        name.as_deref(),
                        arguments.as_ref(),
                    )
                    .map(|h| {
                        serde_json::json!({
                            "rule": h.rule.rule,
                            "matched": h.matched,
                            "approvers": h.rule.approvers,
                            "required": h.rule.required,
                            "max_wait": crate::approval::rules::render_duration(h.rule.max_wait),
                        })
                    }),
                _ => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "token": verified,
                        "explanation": explanation,
                        "decision": decision,
                        "approval_rules": approval_rules,
                        "held_for_approval": held,
                    }))?
                );
            } else {
                println!("{explanation}");
                if let Some(d) = decision {
                    println!(
                        "\ndecision for {}{}: {} (rule {}; {})",
                        method.as_deref().unwrap_or(""),
                        name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
                        if d.allowed { "ALLOW" } else { "DENY" },
                        d.rule,
                        d.reason
                    );
                    if let Some(h) = &held {
                        println!(
                            "HELD FOR APPROVAL by {} ({}): {} approval(s) from [{}], within {}",
                            h["rule"].as_str().unwrap_or("?"),
                            h["matched"].as_str().unwrap_or(""),
                            h["required"],
                            h["approvers"]
                                .as_array()
                                .map(|a| a
                                    .iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "))
                                .unwrap_or_default(),
                            h["max_wait"].as_str().unwrap_or("?")
                        );
                    }
                }
                for r in &approval_rules {
                    println!(
                        "approval rule {}: {}{}{}{} -> approvers [{}], {} required, max_wait {}{}",
                        r.rule,
                        r.methods.join(", "),
                        if r.tools.is_empty() {
                            String::new()
                        } else {
                            format!(" tools [{}]", r.tools.join(", "))
                        },
                        if r.roles.is_empty() {
                            String::new()
                        } else {
                            format!(" for roles [{}]", r.roles.join(", "))
                        },
                        r.when
                            .as_deref()
                            .map(|w| format!(" when {w}"))
                            .unwrap_or_default(),
                        r.approvers.join(", "),
                        r.required,
                        r.max_wait,
                        r.max_grant
                            .as_deref()
                            .map(|g| format!(", grants up to {g}"))
                            .unwrap_or_default(),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
