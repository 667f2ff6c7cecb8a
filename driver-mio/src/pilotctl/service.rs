//! `pilotctl daemon install-service`: writes the systemd unit shipped in
//! `driver-mio/dist/` with the paths of this installation. It never runs
//! `systemctl` itself (it prints the next commands) and never replaces a
//! unit that differs from what it would write unless `--force` is given.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::util::{CliError, CliResult};

/// The user unit as shipped (`driver-mio/dist/pilot-daemon-user.service`).
pub const USER_UNIT: &str = include_str!("../../dist/pilot-daemon-user.service");
/// The system unit as shipped (`driver-mio/dist/pilot-daemon.service`).
pub const SYSTEM_UNIT: &str = include_str!("../../dist/pilot-daemon.service");
/// The installed unit's file name.
pub const UNIT_NAME: &str = "pilot-daemon.service";

/// The daemon binary path the shipped units name.
const USER_EXEC: &str = "%h/.cargo/bin/pilot-daemon";
const SYSTEM_EXEC: &str = "/usr/local/bin/pilot-daemon";

/// Flags of `daemon install-service`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("scope").args(["user", "system"])))]
pub struct InstallArgs {
    /// A user service (systemctl --user), in ~/.config/systemd/user (default)
    #[arg(long)]
    pub user: bool,
    /// A system service (dedicated `pilot` user, /var/lib/pilot), in
    /// /etc/systemd/system
    #[arg(long)]
    pub system: bool,
    /// Write the unit into this directory instead
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// The daemon binary the unit runs [default: pilot-daemon next to this
    /// pilotctl; for --system, /usr/local/bin/pilot-daemon when that one is
    /// under a home directory]
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<PathBuf>,
    /// Replace an existing unit that differs
    #[arg(long)]
    pub force: bool,
}

/// `pilot-daemon` next to the running executable, if there is one.
fn sibling_daemon() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("pilot-daemon");
    p.is_file().then_some(p)
}

/// The default user unit directory: `$XDG_CONFIG_HOME/systemd/user`, else
/// `~/.config/systemd/user`.
fn user_unit_dir() -> CliResult<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("systemd/user"));
    }
    let home = home::home_dir()
        .ok_or_else(|| CliError::new("internal", "no home directory (set HOME)"))?;
    Ok(home.join(".config/systemd/user"))
}

/// The unit text with `exec` as the daemon binary, marked as generated.
pub fn render(system: bool, exec: &Path) -> String {
    let (unit, shipped) = if system {
        (SYSTEM_UNIT, SYSTEM_EXEC)
    } else {
        (USER_UNIT, USER_EXEC)
    };
    let mut out = String::from(
        "# Written by `pilotctl daemon install-service`; edit freely (it is not\n\
         # replaced without --force).\n",
    );
    out.push_str(&unit.replace(
        &format!("ExecStart={shipped} "),
        &format!("ExecStart={} ", exec.display()),
    ));
    out
}

/// Writes `text` to `path` atomically with mode 0644.
fn write_unit(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{UNIT_NAME}.tmp{}", std::process::id()));
    let r = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Runs `daemon install-service`: `{"daemon_bin","next":[…],"scope",
/// "status":"written|unchanged|replaced","unit"}` and a human summary.
pub fn install(a: &InstallArgs) -> CliResult<(Value, String)> {
    let system = a.system;
    let scope = if system { "system" } else { "user" };
    let mut notes = Vec::new();
    let exec = match (&a.daemon_bin, sibling_daemon()) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if system && (p.starts_with("/home") || p.starts_with("/root")) => {
            // ProtectHome=yes and the `pilot` user cannot run it from there.
            notes.push(format!(
                "sudo install -m 0755 {} {SYSTEM_EXEC}",
                p.display()
            ));
            PathBuf::from(SYSTEM_EXEC)
        }
        (None, Some(p)) => p,
        (None, None) if system => PathBuf::from(SYSTEM_EXEC),
        (None, None) => {
            return Err(CliError::new(
                "not_found",
                "no pilot-daemon next to this pilotctl",
            )
            .hint("install both (cargo install --path driver-mio) or name it with --daemon-bin PATH"));
        }
    };
    if !exec.is_absolute() {
        return Err(CliError::invalid(format!(
            "--daemon-bin must be an absolute path (systemd needs one), not {}",
            exec.display()
        )));
    }
    let dir = match &a.unit_dir {
        Some(d) => d.clone(),
        None if system => PathBuf::from("/etc/systemd/system"),
        None => user_unit_dir()?,
    };
    let path = dir.join(UNIT_NAME);
    let text = render(system, &exec);
    let status = match fs::read_to_string(&path) {
        Ok(old) if old == text => "unchanged",
        Ok(_) if !a.force => {
            return Err(CliError::new(
                "already_exists",
                format!("{} exists and differs from the unit this pilotctl writes", path.display()),
            )
            .hint(format!(
                "compare them (pilotctl daemon install-service{} --unit-dir /tmp/x), then add --force to replace it",
                if system { " --system" } else { "" }
            )));
        }
        Ok(_) => "replaced",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "written",
        Err(e) => {
            return Err(CliError::new(
                "internal",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    if status != "unchanged" {
        write_unit(&path, &text).map_err(|e| {
            let mut err =
                CliError::new("internal", format!("cannot write {}: {e}", path.display()));
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                err = err.hint(
                    "a system unit needs root: sudo pilotctl daemon install-service --system",
                );
            }
            err
        })?;
    }
    if system {
        notes.push(
            "sudo useradd --system --home-dir /var/lib/pilot --shell /usr/sbin/nologin pilot"
                .into(),
        );
        notes.push(
            "sudo systemctl daemon-reload && sudo systemctl enable --now pilot-daemon".into(),
        );
    } else {
        notes.push(
            "systemctl --user daemon-reload && systemctl --user enable --now pilot-daemon".into(),
        );
        notes.push("journalctl --user -u pilot-daemon -f".into());
    }
    let mut human = format!(
        "{status} {} ({scope} unit, runs {})\nnext:",
        path.display(),
        exec.display()
    );
    for n in &notes {
        human.push_str("\n  ");
        human.push_str(n);
    }
    Ok((
        json!({
            "daemon_bin": exec.display().to_string(),
            "next": notes,
            "scope": scope,
            "status": status,
            "unit": path.display().to_string(),
        }),
        human,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_units_run_the_given_binary() {
        let u = render(false, Path::new("/opt/p/pilot-daemon"));
        assert!(
            u.contains("ExecStart=/opt/p/pilot-daemon --dir %h/.pilot"),
            "{u}"
        );
        assert!(!u.contains(USER_EXEC));
        let s = render(true, Path::new("/usr/bin/pilot-daemon"));
        assert!(
            s.contains("ExecStart=/usr/bin/pilot-daemon --dir /var/lib/pilot"),
            "{s}"
        );
        assert!(s.contains("NoNewPrivileges=yes") && s.contains("User=pilot"));
    }
}
