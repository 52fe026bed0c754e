//! `do_<method>`: the work of each method, on the [`Agent`]'s owners: the
//! agent's implementation of the protocol's [`Service`].

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use super::cgroup::FREEZE_TIMEOUT;
use super::container::Phase;
use super::error::AgentError;
use super::machine::MachinePlan;
use super::network::NetworkPlan;
use super::platform::Platform;
use super::processes::Pending;
use super::spawn::{self, ChildMount, PidNamespace, Plan, SpawnOptions, Spawned};
use super::streams::PreparedStdio;
use super::{reaper, stats, streams, uptime_ms, Agent, Control};
use crate::agent_log;
use crate::protocol::*;

/// Highest signal number (SIGRTMAX on Linux x86_64).
const MAX_SIGNAL: i32 = 64;

fn kill(pid: i32, signal: i32) -> Result<(), AgentError> {
    // Each process is its own process group leader (setsid), so signal the
    // group; fall back to the pid if it left its group.
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(-pid, signal) } == 0 || unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    Err(AgentError::last_os(format!("kill({pid}, {signal})")))
}

fn no_cgroup() -> AgentError {
    AgentError::Os {
        what: "the guest has no cgroup v2 group for the container".into(),
        errno: libc::EOPNOTSUPP,
    }
}

impl Service for Agent {
    type Error = AgentError;

    /// `hello`: version check and boot info.
    fn do_hello(&self, p: HelloParams) -> Result<HelloResult, AgentError> {
        if p.protocol_version != PROTOCOL_VERSION {
            return Err(AgentError::UnsupportedVersion(p.protocol_version));
        }
        Ok(HelloResult {
            agent_version: AGENT_VERSION.to_string(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: uptime_ms(),
            agent_start_ms: self.start_uptime_ms,
            container_created: self.container.root().is_some(),
        })
    }

    /// `new_machine`: reseeds the kernel's RNG, sets the clock, binds the
    /// devices, in this order, after checking every param. Allowed before
    /// `create`, once: a call that fails its checks changes nothing and
    /// does not count; past them it counts, whatever its outcome.
    fn do_new_machine(&self, p: NewMachineParams) -> Result<NewMachineResult, AgentError> {
        // Held throughout: no `create` meanwhile, nor a second call.
        let phase = self.container.lock();
        match *phase {
            Phase::Empty => {}
            Phase::ShuttingDown => return Err(AgentError::ShuttingDown),
            _ => {
                return Err(AgentError::InvalidState(
                    "container already created (new_machine comes before create)".into(),
                ))
            }
        }
        if self.container.machine_renewed() {
            return Err(AgentError::InvalidState(
                "new_machine already called".into(),
            ));
        }
        let MachinePlan {
            realtime_ns,
            entropy,
            devices,
        } = MachinePlan::new(p)?;
        self.container.mark_machine_renewed();
        let platform = &self.container.platform;
        let reseeded = platform.reseed_rng(entropy.bytes());
        let bytes = entropy.bytes().len();
        drop(entropy);
        reseeded?;
        platform.set_realtime_clock(realtime_ns)?;
        for (i, device) in devices.iter().enumerate() {
            platform.bind_virtio_mmio(device).map_err(|e| match e {
                AgentError::Os { what, errno } => AgentError::Os {
                    what: format!("devices[{i}]: {what}"),
                    errno,
                },
                other => other,
            })?;
        }
        agent_log!(
            "new machine: RNG reseeded with {bytes} bytes, clock set, bound {:?}",
            devices
        );
        drop(phase);
        Ok(NewMachineResult { bound: devices })
    }

    /// `create`: mounts, hostname, network, the init process's stdio, and
    /// the init process itself, spawned and set up up to `execve` (so that
    /// a command that cannot be run fails here, as with runc), waiting for
    /// `start`.
    fn do_create(&self, p: CreateParams) -> Result<CreateResult, AgentError> {
        let mut phase = self.container.lock();
        match *phase {
            Phase::Empty => {}
            Phase::ShuttingDown => return Err(AgentError::ShuttingDown),
            _ => return Err(AgentError::InvalidState("container already created".into())),
        }
        validate_create(&p)?;
        // Validate the process and the network before touching anything.
        Plan::new(&p.process, Path::new("/"))?;
        let network = NetworkPlan::parse(p.network.as_ref())?;
        let platform = &self.container.platform;
        let root = match platform
            .mount_shares(&p.shares)
            .and_then(|_| platform.mount_rootfs(&p.rootfs))
        {
            Ok(root) => root,
            Err(e) => {
                platform.unmount_all();
                return Err(e);
            }
        };
        // The group exists before the container's mounts: a `cgroup` mount
        // of the spec shows it (see `Platform::apply_mounts`), and its
        // memory controller is the guest's before anything else takes it.
        let cgroup = platform.container_cgroup();
        let prepared = platform
            .apply_mounts(&root, &p.mounts, p.pid_namespace)
            .and_then(|deferred| match &p.hostname {
                Some(h) if !h.is_empty() => platform.set_hostname(h).map(|_| deferred),
                _ => Ok(deferred),
            })
            .and_then(|deferred| platform.configure_network(&network).map(|_| deferred))
            .and_then(|deferred| set_sysctls(platform.as_ref(), &p).map(|_| deferred))
            .and_then(|deferred| {
                self.streams
                    .prepare(p.process.terminal, p.stdin, p.process.console_size, &root)
                    .map(|stdio| (deferred, stdio))
            });
        let (deferred, stdio) = match prepared {
            Ok(s) => s,
            Err(e) => {
                platform.unmount_all();
                return Err(e);
            }
        };
        self.container.set_cgroup(cgroup);
        let init = self.processes.add_starting(stdio.tty_master.clone());
        let pid_ns = if p.pid_namespace {
            PidNamespace::New
        } else {
            PidNamespace::Inherit
        };
        let spawned = self
            .spawn_process(init, &p.process, &stdio, &root, pid_ns, &deferred, true)
            .and_then(|child| {
                if !p.pid_namespace {
                    return Ok(child);
                }
                let ns = std::fs::File::open(format!("/proc/{}/ns/pid", child.pid))
                    .map_err(|e| AgentError::from_io("open the container's PID namespace", &e))?;
                self.container.set_pid_ns(Some(ns.into()));
                Ok(child)
            });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                // A child waiting for `start` exits when its `Spawned` is
                // dropped; its exit is dropped with the table entry.
                self.processes.remove(init);
                self.streams.discard(&stdio.tokens);
                platform.unmount_all();
                return Err(e);
            }
        };
        self.processes.mark_created(init, Pending { child });
        let streams = stdio.tokens.clone();
        // Dropping the prepared stdio closes the child's ends here.
        drop(stdio);
        *phase = Phase::Created { root, init };
        agent_log!("created container {}", p.container_id);
        Ok(CreateResult {
            container_id: p.container_id,
            process_id: init,
            streams,
        })
    }

    /// `start`: lets the init process, waiting since `create`, exec.
    fn do_start(&self, _p: StartParams) -> Result<StartResult, AgentError> {
        let mut phase = self.container.lock();
        let (root, init) = match &*phase {
            Phase::Created { root, init } => (root.clone(), *init),
            Phase::Empty => return Err(AgentError::InvalidState("container not created".into())),
            Phase::Started { .. } => {
                return Err(AgentError::InvalidState("container already started".into()))
            }
            Phase::ShuttingDown => return Err(AgentError::ShuttingDown),
        };
        let pending = self.processes.take_pending(init)?;
        let pid = pending.child.pid;
        let released = pending.child.release();
        // Either way the process ran: it exec'd, or it exits (127) and its
        // exit is reported.
        self.processes.mark_running(init, pid);
        *phase = Phase::Started { root, init };
        released.map(|pid| StartResult {
            process_id: init,
            pid,
        })
    }

    /// `exec`: another process in the container, started at once; refused
    /// while the container is paused (as runc).
    fn do_exec(&self, p: ExecParams) -> Result<ExecResult, AgentError> {
        let root = match &*self.container.lock() {
            Phase::Created { root, .. } | Phase::Started { root, .. } => root.clone(),
            Phase::Empty => return Err(AgentError::InvalidState("container not created".into())),
            Phase::ShuttingDown => return Err(AgentError::ShuttingDown),
        };
        Plan::new(&p.process, &root)?;
        // Held across the fork: a child joining a frozen group would freeze
        // before execve and never report back.
        let frozen = self.container.frozen();
        if *frozen {
            return Err(AgentError::InvalidState("container is paused".into()));
        }
        let stdio =
            self.streams
                .prepare(p.process.terminal, p.stdin, p.process.console_size, &root)?;
        let id = self.processes.add_starting(stdio.tty_master.clone());
        let ns = self.container.pid_ns();
        let pid_ns = match &ns {
            Some(fd) => PidNamespace::Join(fd.as_raw_fd()),
            None => PidNamespace::Inherit,
        };
        match self.spawn_process(id, &p.process, &stdio, &root, pid_ns, &[], false) {
            Ok(child) => {
                let pid = child.pid;
                self.processes.mark_running(id, pid);
                Ok(ExecResult {
                    process_id: id,
                    pid,
                    streams: stdio.tokens.clone(),
                })
            }
            Err(e) => {
                self.processes.remove(id);
                self.streams.discard(&stdio.tokens);
                Err(e)
            }
        }
    }

    /// `wait`: blocks until the process exits.
    fn do_wait(&self, p: WaitParams) -> Result<ProcessExit, AgentError> {
        self.processes.wait(p.process_id)
    }

    /// `signal`: one process group, or all of them.
    fn do_signal(&self, p: SignalParams) -> Result<Empty, AgentError> {
        if !(0..=MAX_SIGNAL).contains(&p.signal) {
            return Err(AgentError::InvalidParams(format!(
                "signal {} out of range",
                p.signal
            )));
        }
        if p.all {
            for (_, pid) in self.processes.running() {
                // A process that exits meanwhile is not an error.
                let _ = kill(pid, p.signal);
            }
            return Ok(Empty {});
        }
        let Some(id) = p.process_id else {
            return Err(AgentError::InvalidParams(
                "processId or all is required".into(),
            ));
        };
        kill(self.processes.running_pid(id)?, p.signal)?;
        Ok(Empty {})
    }

    /// `resize`: TIOCSWINSZ on the process's pty.
    fn do_resize(&self, p: ResizeParams) -> Result<Empty, AgentError> {
        let tty = self.processes.tty(p.process_id)?;
        streams::set_winsize(&tty, p.rows, p.cols)?;
        Ok(Empty {})
    }

    /// `stats`: memory, cpu time, pids.
    fn do_stats(&self, _p: Empty) -> Result<StatsResult, AgentError> {
        let roots: Vec<i32> = self
            .processes
            .running()
            .into_iter()
            .map(|(_, pid)| pid)
            .collect();
        let live = stats::container_processes(&roots);
        let (eu, es) = self.processes.exited_cpu_ns();
        let (ou, os) = reaper::orphan_cpu_ns();
        Ok(StatsResult {
            memory: stats::memory(),
            cpu: stats::cpu(&live, (eu.saturating_add(ou), es.saturating_add(os))),
            pids: live.len().try_into().unwrap_or(u32::MAX),
        })
    }

    /// `ps`: the container's live processes.
    fn do_ps(&self, _p: Empty) -> Result<PsResult, AgentError> {
        let running = self.processes.running();
        let roots: Vec<i32> = running.iter().map(|&(_, pid)| pid).collect();
        let ids = stats::id_by_pid(&running);
        let processes = stats::container_processes(&roots)
            .into_iter()
            .map(|p| PsEntry {
                pid: p.pid,
                ppid: p.ppid,
                process_id: ids.get(&p.pid).copied(),
                cmdline: stats::cmdline(p.pid),
            })
            .collect();
        Ok(PsResult { processes })
    }

    /// `pause`: freezes every process of the container (its cgroup) and
    /// returns once the kernel reports the group frozen. Only a started
    /// container whose init process runs can be paused, once.
    fn do_pause(&self, _p: Empty) -> Result<Empty, AgentError> {
        let mut frozen = self.container.frozen_mut();
        let init = match &*self.container.lock() {
            Phase::Started { init, .. } => *init,
            Phase::Created { .. } => {
                return Err(AgentError::InvalidState("container not started".into()))
            }
            Phase::Empty => return Err(AgentError::InvalidState("container not created".into())),
            Phase::ShuttingDown => return Err(AgentError::ShuttingDown),
        };
        if *frozen {
            return Err(AgentError::InvalidState("container already paused".into()));
        }
        if self.processes.running_pid(init).is_err() {
            return Err(AgentError::InvalidState(
                "the container's process has exited".into(),
            ));
        }
        let cgroup = self.container.cgroup().ok_or_else(no_cgroup)?;
        cgroup.set_frozen(true, FREEZE_TIMEOUT)?;
        *frozen = true;
        agent_log!("paused");
        Ok(Empty {})
    }

    /// `resume`: thaws a paused container.
    fn do_resume(&self, _p: Empty) -> Result<Empty, AgentError> {
        let mut frozen = self.container.frozen_mut();
        match &*self.container.lock() {
            Phase::Empty => return Err(AgentError::InvalidState("container not created".into())),
            Phase::ShuttingDown => return Err(AgentError::ShuttingDown),
            Phase::Created { .. } | Phase::Started { .. } => {}
        }
        if !*frozen {
            return Err(AgentError::InvalidState("container not paused".into()));
        }
        let cgroup = self.container.cgroup().ok_or_else(no_cgroup)?;
        cgroup.set_frozen(false, FREEZE_TIMEOUT)?;
        *frozen = false;
        agent_log!("resumed");
        Ok(Empty {})
    }

    /// `shutdown`: marks the agent as shutting down; the work happens in
    /// `Control::finish_shutdown` after the response is written.
    fn do_shutdown(&self, _p: Empty) -> Result<Empty, AgentError> {
        *self.container.lock() = Phase::ShuttingDown;
        Ok(Empty {})
    }
}

impl Agent {
    /// Spawns `spec` with `stdio` in the container's cgroup. The init
    /// process (`init`) waits for `start` and reports on its exit whether
    /// the guest's OOM killer struck.
    #[allow(clippy::too_many_arguments)]
    fn spawn_process(
        &self,
        id: ProcessId,
        spec: &ProcessSpec,
        stdio: &PreparedStdio,
        root: &Path,
        pid_ns: PidNamespace,
        mounts: &[ChildMount],
        init: bool,
    ) -> Result<Spawned, AgentError> {
        let plan = Plan::new(spec, root)?;
        let child = stdio.child.as_child_stdio()?;
        let procs = self
            .container
            .cgroup()
            .map(|cg| cg.open_procs())
            .transpose()?;
        let table = Arc::clone(&self.processes);
        let platform = Arc::clone(&self.container.platform);
        spawn::spawn(
            plan,
            &child,
            &SpawnOptions {
                cgroup_procs: procs.as_ref().map(|fd| fd.as_raw_fd()),
                pid_ns,
                mounts,
                wait_for_start: init,
            },
            Box::new(move |raw| {
                // Only the container's exit needs it (engines read it
                // then): one file read less for every other exit.
                let oom_killed = init && platform.oom_kills() > 0;
                table.on_exit(id, raw, oom_killed)
            }),
        )
    }

    /// Thaws a paused container (best effort) so that shutdown's SIGKILLs
    /// and unmounts do not wait on frozen tasks.
    fn thaw_for_shutdown(&self) {
        let mut frozen = self.container.frozen_mut();
        if !*frozen {
            return;
        }
        if let Some(cgroup) = self.container.cgroup() {
            if let Err(e) = cgroup.set_frozen(false, FREEZE_TIMEOUT) {
                agent_log!("shutdown: {e}");
            }
        }
        *frozen = false;
    }
}

impl Control for Agent {
    /// Kills the remaining processes, syncs, unmounts and powers off. Runs
    /// once, after `shutdown` was answered.
    fn finish_shutdown(&self) {
        if !self.container.claim_power_off() {
            return;
        }
        agent_log!("shutting down");
        self.thaw_for_shutdown();
        for pid in self.processes.live_pids() {
            let _ = kill(pid, libc::SIGKILL);
        }
        self.streams.clear();
        self.container.platform.unmount_for_power_off();
        self.container.platform.power_off();
    }
}

/// Sets `create`'s `sysctl`, in key order (keys checked by
/// [`validate_create`]).
fn set_sysctls(platform: &dyn Platform, p: &CreateParams) -> Result<(), AgentError> {
    for (key, value) in &p.sysctl {
        let path = sysctl_path(key).unwrap_or_default();
        platform.set_sysctl(&path, value)?;
    }
    Ok(())
}

/// Checks `create`'s rootfs, shares and sysctl keys before anything is
/// touched.
pub(crate) fn validate_create(p: &CreateParams) -> Result<(), AgentError> {
    match p.rootfs.fstype {
        RootfsType::Virtiofs if p.rootfs.tag.is_none() => {
            return Err(AgentError::InvalidParams(
                "rootfs.tag is required for virtiofs".into(),
            ))
        }
        RootfsType::Ext4 | RootfsType::Erofs if p.rootfs.source.is_none() => {
            return Err(AgentError::InvalidParams(
                "rootfs.source is required".into(),
            ))
        }
        _ => {}
    }
    if let Some(bad) = p
        .shares
        .iter()
        .find(|s| ShareSpec::mount_point(&s.tag).is_none())
    {
        return Err(AgentError::InvalidParams(format!(
            "shares: bad tag {:?} (1 to 36 bytes of letters, digits, '.', '_', '-')",
            bad.tag
        )));
    }
    if let Some((key, _)) = p
        .sysctl
        .iter()
        .find(|(k, v)| sysctl_path(k).is_none() || v.contains('\0'))
    {
        return Err(AgentError::InvalidParams(format!(
            "sysctl: bad key {key:?} or its value (a dotted name or a path below /proc/sys)"
        )));
    }
    Ok(())
}
