//! `interceptor install` / `uninstall`: the agent as a systemd service.
//!
//! Owns the unit file (rendered from `packaging/interceptor.service.in`), the configuration
//! skeleton, the service account (`sysusers.d`) and directories (`tmpfiles.d`), and putting
//! them in place under a root directory (`/`, or a staging root for packaging and tests). The
//! Debian package ships the same files (`packaging/`, `[package.metadata.deb]`).
//!
//! | file | mode | from |
//! |---|---|---|
//! | `<bindir>/interceptor` | 0755 | the running binary (or `--bin`) |
//! | `/etc/systemd/system/interceptor.service` | 0644 | the unit template, `ExecStart` = the binary |
//! | `/etc/interceptor/interceptor.toml` | 0640 | skeleton, only when absent |
//! | `/etc/interceptor/policies/` | 0750 | |
//! | `/usr/lib/sysusers.d/interceptor.conf` | 0644 | service account `interceptor` |
//! | `/usr/lib/tmpfiles.d/interceptor.conf` | 0644 | `/etc/interceptor`, `/var/lib/interceptor` |
//! | `/var/lib/interceptor/` | 0750 | state directory (systemd `StateDirectory=`) |
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub const UNIT_NAME: &str = "interceptor.service";
pub const UNIT_TEMPLATE: &str = include_str!("../../packaging/interceptor.service.in");
pub const CONFIG_SKELETON: &str = include_str!("../../packaging/interceptor.toml");
pub const SYSUSERS: &str = include_str!("../../packaging/sysusers.d/interceptor.conf");
pub const TMPFILES: &str = include_str!("../../packaging/tmpfiles.d/interceptor.conf");
pub const SERVICE_ACCOUNT: &str = "interceptor";
pub const CONFIG_PATH: &str = "/etc/interceptor/interceptor.toml";
pub const STATE_DIR: &str = "/var/lib/interceptor";
/// The default `audit.signing_key`.
pub const SIGNING_KEY: &str = "/etc/interceptor/audit-signing.key";

/// The unit file for a binary at `bin` reading `config`.
pub fn render_unit(bin: &Path, config: &Path) -> String {
    UNIT_TEMPLATE
        .replace("@BIN@", &bin.display().to_string())
        .replace("@CONFIG@", &config.display().to_string())
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Everything goes under this directory ("/" for the real system).
    pub root: PathBuf,
    /// The binary to install (default: the running one).
    pub bin_src: PathBuf,
    /// Where the binary goes (absolute, as seen on the target system).
    pub bin_dir: PathBuf,
    /// Run systemd-sysusers/-tmpfiles and `systemctl daemon-reload` + `enable`.
    pub activate: bool,
    /// Also start the service now (`enable --now`).
    pub start: bool,
}

/// What install/uninstall did, one line per action (printed by the CLI).
pub type Report = Vec<String>;

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write next to the target and rename, so a running system never sees half a file.
    let tmp = path.with_extension("interceptor-new");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))?;
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// systemd runs as PID 1 here (sd_booted(3)).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn run(report: &mut Report, cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    report.push(format!("ran {cmd} {}", args.join(" ")));
    Ok(())
}

pub fn install(opts: &InstallOptions) -> Result<Report> {
    let mut report = Report::new();
    if !opts.bin_dir.is_absolute() {
        bail!("--bin-dir must be absolute");
    }
    let root = &opts.root;
    let bin = opts.bin_dir.join("interceptor");
    let bin_dst = under(root, &bin.display().to_string());
    let binary = std::fs::read(&opts.bin_src)
        .with_context(|| format!("reading the binary {}", opts.bin_src.display()))?;
    if std::fs::canonicalize(&opts.bin_src).ok() != std::fs::canonicalize(&bin_dst).ok() {
        write_file(&bin_dst, &binary, 0o755)?;
        report.push(format!("installed {}", bin_dst.display()));
    }
    let unit = under(root, "/etc/systemd/system/interceptor.service");
    write_file(
        &unit,
        render_unit(&bin, Path::new(CONFIG_PATH)).as_bytes(),
        0o644,
    )?;
    report.push(format!("installed {}", unit.display()));
    for (path, content) in [
        ("/usr/lib/sysusers.d/interceptor.conf", SYSUSERS),
        ("/usr/lib/tmpfiles.d/interceptor.conf", TMPFILES),
    ] {
        let p = under(root, path);
        write_file(&p, content.as_bytes(), 0o644)?;
        report.push(format!("installed {}", p.display()));
    }
    make_dir(&under(root, "/etc/interceptor"), 0o750)?;
    make_dir(&under(root, "/etc/interceptor/policies"), 0o750)?;
    make_dir(&under(root, STATE_DIR), 0o750)?;
    let config = under(root, CONFIG_PATH);
    if config.exists() {
        report.push(format!("kept the existing {}", config.display()));
    } else {
        write_file(&config, CONFIG_SKELETON.as_bytes(), 0o640)?;
        report.push(format!("installed the skeleton {}", config.display()));
    }
    // The checkpoint signing key lives in /etc, which the service cannot write
    // (ProtectSystem=strict): it is made here, once, and kept across reinstalls.
    let key = under(root, SIGNING_KEY);
    let (created, _) = crate::audit::init_signing_key(&key, &crate::audit::default_key_name())?;
    report.push(format!(
        "{} the audit signing key {} (public key: {})",
        if created { "created" } else { "kept" },
        key.display(),
        crate::audit::public_key_path(&key).display()
    ));
    if opts.activate {
        // The account first, so tmpfiles can hand the directories to its group.
        run(&mut report, "systemd-sysusers", &["interceptor.conf"])?;
        run(
            &mut report,
            "systemd-tmpfiles",
            &["--create", "interceptor.conf"],
        )?;
        // The configuration may name secrets: readable by root and the service group only.
        run(
            &mut report,
            "chgrp",
            &[SERVICE_ACCOUNT, &config.display().to_string()],
        )?;
        if systemd_booted() {
            run(&mut report, "systemctl", &["daemon-reload"])?;
            let mut args = vec!["enable"];
            if opts.start {
                args.push("--now");
            }
            args.push(UNIT_NAME);
            run(&mut report, "systemctl", &args)?;
        } else {
            report.push("systemd is not running here: not enabled".into());
        }
    }
    Ok(report)
}

#[derive(Debug, Clone)]
pub struct UninstallOptions {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    /// Stop and disable through systemctl (and daemon-reload after).
    pub activate: bool,
    /// Also remove /etc/interceptor and the state directory (the audit store with it).
    pub purge: bool,
}

/// Removes what [`install`] put in place. The pinned programs are left alone: detaching is an
/// explicit operator decision (`interceptor detach`), since it opens the protected ports.
pub fn uninstall(opts: &UninstallOptions) -> Result<Report> {
    let mut report = Report::new();
    let root = &opts.root;
    if opts.activate && systemd_booted() {
        let unit_known = under(root, "/etc/systemd/system/interceptor.service").exists();
        if unit_known {
            run(&mut report, "systemctl", &["disable", "--now", UNIT_NAME])?;
        }
    }
    let mut remove = vec![
        under(root, "/etc/systemd/system/interceptor.service"),
        under(root, "/usr/lib/sysusers.d/interceptor.conf"),
        under(root, "/usr/lib/tmpfiles.d/interceptor.conf"),
    ];
    let bin = under(
        root,
        &opts.bin_dir.join("interceptor").display().to_string(),
    );
    // Never delete the binary that is running this command out from under a package manager.
    if !bin.starts_with(under(root, "/usr/bin")) {
        remove.push(bin);
    }
    for p in remove {
        match std::fs::remove_file(&p) {
            Ok(()) => report.push(format!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    if opts.purge {
        for d in ["/etc/interceptor", STATE_DIR] {
            let p = under(root, d);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                report.push(format!("removed {}", p.display()));
            }
        }
    } else {
        report.push(format!(
            "kept /etc/interceptor and {STATE_DIR} (audit evidence); --purge removes them"
        ));
    }
    if opts.activate && systemd_booted() {
        run(&mut report, "systemctl", &["daemon-reload"])?;
    }
    Ok(report)
}

/// `interceptor install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Install under this directory instead of the running system (packaging, tests): no
    /// account is created and systemd is not touched.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The binary to install (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Where the binary goes on the target system.
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// Also start the service now (it needs a configured `[[services]]` table first).
    #[arg(long)]
    pub now: bool,
    /// Print the unit file for --bin-dir and exit.
    #[arg(long)]
    pub print_unit: bool,
}

/// `interceptor uninstall`.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// Also remove /etc/interceptor and /var/lib/interceptor (the audit store with it).
    #[arg(long)]
    pub purge: bool,
}

pub fn install_command(args: InstallArgs) -> Result<std::process::ExitCode> {
    if args.print_unit {
        print!(
            "{}",
            render_unit(&args.bin_dir.join("interceptor"), Path::new(CONFIG_PATH))
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let system = args.root == Path::new("/");
    let bin_src = match args.bin {
        Some(b) => b,
        None => std::env::current_exe().context("locating the running binary")?,
    };
    let report = install(&InstallOptions {
        root: args.root,
        bin_src,
        bin_dir: args.bin_dir,
        activate: system,
        start: args.now,
    })?;
    for l in report {
        println!("{l}");
    }
    if system && !args.now {
        println!(
            "next: declare the protected [[services]] in {CONFIG_PATH}, then \
             `systemctl start {UNIT_NAME}`"
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn uninstall_command(args: UninstallArgs) -> Result<std::process::ExitCode> {
    let system = args.root == Path::new("/");
    let report = uninstall(&UninstallOptions {
        root: args.root,
        bin_dir: args.bin_dir,
        activate: system,
        purge: args.purge,
    })?;
    for l in report {
        println!("{l}");
    }
    if system && Path::new("/sys/fs/bpf/interceptor").exists() {
        println!(
            "note: the eBPF programs stay pinned, so protected ports keep refusing connections; \
             `interceptor detach --config FILE` removes them"
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn staging(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icpt-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .mode()
            & 0o7777
    }

    #[test]
    fn unit_is_notify_hardened_and_names_the_binary() {
        let u = render_unit(
            Path::new("/opt/x/interceptor"),
            Path::new("/etc/interceptor/interceptor.toml"),
        );
        assert!(
            !u.contains("@BIN@") && !u.contains("@CONFIG@"),
            "placeholder left: {u}"
        );
        let lines: Vec<&str> = u.lines().map(str::trim).collect();
        for want in [
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=/opt/x/interceptor run --config /etc/interceptor/interceptor.toml",
            "ExecStartPre=/opt/x/interceptor check-config /etc/interceptor/interceptor.toml",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "StateDirectory=interceptor",
            "RuntimeDirectory=interceptor",
            "ReadWritePaths=/sys/fs/bpf",
            "ProtectControlGroups=yes",
            "WantedBy=multi-user.target",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{u}");
        }
        assert!(
            lines.iter().any(|l| l.starts_with("WatchdogSec=")),
            "no watchdog"
        );
        assert!(!u.contains("CAP_SYS_ADMIN\n") && !u.contains("CAP_SYS_ADMIN "));
        // /sys is read-only except the pins (ProtectKernelTunables= would pin it read-only).
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ReadOnlyPaths=/sys ") && l.contains("-/proc/sys ")),
            "{u}"
        );
        assert!(!lines.contains(&"ProtectKernelTunables=yes"), "{u}");
        // Every non-comment line is `Key=Value` or a section header.
        for l in lines
            .iter()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(
                (l.starts_with('[') && l.ends_with(']')) || l.contains('='),
                "bad line {l:?}"
            );
        }
    }

    #[test]
    fn debian_package_ships_the_same_unit() {
        let shipped = include_str!("../../packaging/debian/interceptor.service");
        assert_eq!(
            shipped,
            render_unit(Path::new("/usr/bin/interceptor"), Path::new(CONFIG_PATH)),
            "packaging/debian/interceptor.service is stale: regenerate it with \
             `interceptor install --print-unit --bin-dir /usr/bin`"
        );
    }

    #[test]
    fn skeleton_parses_up_to_the_missing_service() {
        let e = crate::config::Config::parse(CONFIG_SKELETON, "skeleton")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no protected service"), "{e}");
        let with_service =
            format!("{CONFIG_SKELETON}\n[[services]]\nname = \"crm\"\nport = 8080\n");
        let c = crate::config::Config::parse(&with_service, "skeleton").unwrap();
        assert_eq!(c.agent.log_format, "journal");
        assert_eq!(c.agent.runtime_dir, Path::new("/run/interceptor"));
    }

    #[test]
    fn install_into_a_staging_root_and_uninstall() {
        let root = staging("root");
        let src = root.join("build/interceptor");
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(&src, b"\x7fELF fake binary").unwrap();
        let opts = InstallOptions {
            root: root.clone(),
            bin_src: src.clone(),
            bin_dir: "/usr/local/bin".into(),
            activate: false,
            start: false,
        };
        install(&opts).unwrap();
        let bin = root.join("usr/local/bin/interceptor");
        assert_eq!(std::fs::read(&bin).unwrap(), b"\x7fELF fake binary");
        assert_eq!(mode(&bin), 0o755);
        let unit = root.join("etc/systemd/system/interceptor.service");
        assert_eq!(mode(&unit), 0o644);
        let u = std::fs::read_to_string(&unit).unwrap();
        assert!(u.contains(
            "\nExecStart=/usr/local/bin/interceptor run --config /etc/interceptor/interceptor.toml\n"
        ));
        let cfg = root.join("etc/interceptor/interceptor.toml");
        assert_eq!(mode(&cfg), 0o640);
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), CONFIG_SKELETON);
        assert_eq!(mode(&root.join("etc/interceptor")), 0o750);
        assert_eq!(mode(&root.join("etc/interceptor/policies")), 0o750);
        assert_eq!(mode(&root.join("var/lib/interceptor")), 0o750);
        let sysusers =
            std::fs::read_to_string(root.join("usr/lib/sysusers.d/interceptor.conf")).unwrap();
        assert!(sysusers.contains("\nu interceptor "), "{sysusers}");
        assert_eq!(
            mode(&root.join("usr/lib/tmpfiles.d/interceptor.conf")),
            0o644
        );
        // No temporary file left behind.
        let leftovers: Vec<_> = walk(&root)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("interceptor-new"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // The signing key is made at install time (the service cannot write /etc).
        let key = root.join("etc/interceptor/audit-signing.key");
        assert_eq!(mode(&key), 0o600);
        let key_text = std::fs::read_to_string(&key).unwrap();
        let public =
            std::fs::read_to_string(root.join("etc/interceptor/audit-signing.key.pub")).unwrap();
        assert!(public.contains("/interceptor+"), "{public}");

        // A second install keeps an edited configuration and the key.
        std::fs::write(&cfg, "# edited\n").unwrap();
        let r = install(&opts).unwrap();
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "# edited\n");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), key_text);
        assert!(
            r.iter().any(|l| l.starts_with("kept the existing")),
            "{r:?}"
        );

        std::fs::write(root.join("var/lib/interceptor/audit.db"), b"x").unwrap();
        uninstall(&UninstallOptions {
            root: root.clone(),
            bin_dir: "/usr/local/bin".into(),
            activate: false,
            purge: false,
        })
        .unwrap();
        assert!(!bin.exists() && !unit.exists());
        assert!(cfg.exists(), "configuration kept without --purge");
        assert!(root.join("var/lib/interceptor/audit.db").exists());
        uninstall(&UninstallOptions {
            root: root.clone(),
            bin_dir: "/usr/local/bin".into(),
            activate: false,
            purge: true,
        })
        .unwrap();
        assert!(!root.join("etc/interceptor").exists());
        assert!(!root.join("var/lib/interceptor").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }
}
