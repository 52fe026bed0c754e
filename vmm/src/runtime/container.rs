//! The operations of the OCI runtime (runtime spec `runtime.md` §
//! "Operations", with runc's semantics), one function per verb, each
//! written once over the container's [`Backend`] ([`Runtime::backend`]);
//! the CLI files in `cli/` only parse arguments and print.

use std::path::Path;

use serde::Serialize;

use super::backend::{Backend, CreateOptions, Created, ExecOptions, PsFormat};
use super::bundle::Bundle;
use super::id_lock::{IdLock, LaunchRecord, Wait};
use super::jail;
use super::runc::Runc;
use super::spawn::Ready;
use super::state::{self, Container, Record, Root, RuntimeType, Status};
use super::vm::{exec, VmBackend, VmContainer};
use super::{Result, RuntimeError};

/// Where capsa and runc keep state; how to reach runc.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `--root`.
    pub root: Root,
    /// The `process` runtime type: runc.
    pub runc: Runc,
    /// The `vm` runtime type.
    pub vm: VmBackend,
}

/// The OCI state of a container (runtime spec `runtime.md` § "State", plus
/// runc's `rootfs` and `created` and capsa's `runtime`), as `state` and
/// `list --format json` print it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// Always `1.0.2`.
    pub oci_version: &'static str,
    /// Container id.
    pub id: String,
    /// Its status.
    pub status: Status,
    /// The host pid that stands for the container's process; 0 once
    /// stopped.
    pub pid: i32,
    /// Absolute bundle path.
    pub bundle: std::path::PathBuf,
    /// Absolute rootfs directory.
    pub rootfs: std::path::PathBuf,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Owner (runc: empty).
    pub owner: String,
    /// The spec's annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The runtime type.
    pub runtime: RuntimeType,
}

/// Removes what a container left: its state directory, its host cgroup,
/// its uid lease and a vsock socket kept outside it.
fn remove_container_files(dir: &Path, vsock: &Path) {
    // The VMM is gone (or never started): its virtiofsd ends with its
    // connection; make sure, by the recorded pid, before the files go.
    super::virtiofsd::stop(dir, std::time::Duration::from_secs(5));
    // Empty now: the jailer, the VMM and virtiofsd were all it held.
    super::cgroup::remove_recorded(dir);
    jail::release_uid(Path::new(jail::UID_LEASES), dir);
    if !vsock.starts_with(dir) {
        let _ = std::fs::remove_file(vsock);
        for port in [1024, 1025] {
            let _ = std::fs::remove_file(format!("{}_{port}", vsock.display()));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

impl Runtime {
    /// The runtime with state root `root`, handing `process` containers to
    /// `runc`.
    pub fn new(root: Root, runc: Runc) -> Runtime {
        let vm = VmBackend {
            root: root.path.clone(),
        };
        Runtime { root, runc, vm }
    }

    /// The backend of a runtime type: the one place that tells them apart.
    pub fn backend(&self, runtime: RuntimeType) -> &dyn Backend {
        match runtime {
            RuntimeType::Vm => &self.vm,
            RuntimeType::Process => &self.runc,
        }
    }

    fn load(&self, id: &str) -> Result<(Container, &dyn Backend)> {
        let c = self.root.load(id)?;
        let backend = self.backend(c.record.runtime.kind());
        Ok((c, backend))
    }

    /// `create`: validates the bundle and creates the container with the
    /// backend of its runtime type; returns once the container is created,
    /// or fails having removed everything it made. Holds the id's
    /// [`IdLock`] throughout.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<Created> {
        state::validate_id(id)?;
        let lock = IdLock::acquire(&self.root, id, Wait::Block)?;
        if self.root.dir(id).exists() {
            return Err(RuntimeError::Exists(id.to_string()));
        }
        let bundle = Bundle::load(&opts.bundle)?;
        let dir = self.root.create_dir(id)?;
        let result = self.backend(bundle.runtime).create(id, &bundle, &dir, opts);
        if result.is_err() {
            remove_container_files(&dir, &state::vsock_path(&dir));
            if let Some(lock) = lock {
                lock.remove();
            }
        }
        result
    }

    /// The id's [`IdLock`] for `delete`: while a `create` of the id runs,
    /// an error, or with `force` its processes are killed and the lock
    /// waited for (the `create` then fails and cleans up). Also returns
    /// whether a `create` was stopped so.
    fn lock_for_delete(&self, id: &str, force: bool) -> Result<(Option<IdLock>, bool)> {
        state::validate_id(id)?;
        if let Some(lock) = IdLock::acquire(&self.root, id, Wait::Try)? {
            return Ok((Some(lock), false));
        }
        if !force {
            return Err(RuntimeError::Failed(format!(
                "container {id} is being created (delete --force stops it)"
            )));
        }
        // The `create` may not have started its VMM yet (it builds the
        // rootfs image first): kill it as soon as it is recorded.
        loop {
            LaunchRecord::kill_recorded(&self.root.dir(id));
            if let Some(lock) = IdLock::acquire(&self.root, id, Wait::Try)? {
                return Ok((Some(lock), true));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `start`: runs the container's process.
    pub fn start(&self, id: &str) -> Result<()> {
        let (c, backend) = self.load(id)?;
        backend.start(&c)
    }

    /// `state`: the container's OCI state.
    pub fn state(&self, id: &str) -> Result<OciState> {
        let (c, backend) = self.load(id)?;
        Ok(oci_state(c, backend, ""))
    }

    /// `kill`: a signal to the container's process (`all`: to every
    /// process of the container).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let (c, backend) = self.load(id)?;
        backend.kill(&c, signal, all)
    }

    /// `delete`: removes a stopped (or created) container; `force` kills
    /// a running one first.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (lock, stopped_create) = self.lock_for_delete(id, force)?;
        let (c, backend) = match self.load(id) {
            Err(RuntimeError::NotFound(_)) if force => {
                // A `create` that was killed before it recorded the
                // container (what it started may still run), or none at
                // all: as runc, `--force` removes what is there and
                // succeeds (podman deletes after a failed `create`).
                let dir = self.root.dir(id);
                if dir.is_dir() {
                    LaunchRecord::kill_recorded(&dir);
                    remove_container_files(&dir, &state::vsock_path(&dir));
                }
                if let Some(lock) = lock {
                    lock.remove();
                }
                return Ok(());
            }
            Err(e) => {
                if let Some(lock) = lock {
                    lock.remove();
                }
                // The `create` this `delete --force` stopped removed it all.
                return match e {
                    RuntimeError::NotFound(_) if stopped_create => Ok(()),
                    e => Err(e),
                };
            }
            Ok(loaded) => loaded,
        };
        backend.delete(&c, force)?;
        let vsock = c
            .vm()
            .map_or_else(|| state::vsock_path(&c.dir), |vm| vm.vsock.clone());
        remove_container_files(&c.dir, &vsock);
        if let Some(lock) = lock {
            lock.remove();
        }
        Ok(())
    }

    /// `ps`: the container's processes, as text to print.
    pub fn ps(&self, id: &str, format: PsFormat) -> Result<String> {
        let (c, backend) = self.load(id)?;
        backend.ps(&c, format)
    }

    /// `pause`: freezes the container's processes.
    pub fn pause(&self, id: &str) -> Result<()> {
        let (c, backend) = self.load(id)?;
        backend.pause(&c)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let (c, backend) = self.load(id)?;
        backend.resume(&c)
    }

    /// `exec`: another process in the container; returns the status to
    /// exit with.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<u8> {
        let (c, backend) = self.load(id)?;
        backend.exec(&c, opts)
    }

    /// The hidden `exec-process` helper of a detached `exec` in a `vm`
    /// container ([`exec::serve_detached`]).
    pub fn serve_detached_exec(
        &self,
        id: &str,
        process_file: &Path,
        console_socket: Option<&Path>,
        ready: &mut Ready,
    ) -> Result<i32> {
        let c = self.root.load(id)?;
        exec::serve_detached(&VmContainer::of(&c)?, process_file, console_socket, ready)
    }

    /// Waits for the process `create` made (`run`); returns its exit
    /// status.
    pub fn wait(&self, id: &str, created: Created) -> Result<i32> {
        let (c, backend) = self.load(id)?;
        Ok(backend.wait(&c, created))
    }

    /// `list`: the OCI state of every container, sorted by id.
    pub fn list(&self) -> Vec<OciState> {
        self.root
            .list()
            .into_iter()
            .map(|c| {
                let backend = self.backend(c.record.runtime.kind());
                oci_state(c, backend, "root")
            })
            .collect()
    }
}

/// The OCI state of `c` (`owner` as runc shows it: empty in `state`,
/// `root` in `list`).
fn oci_state(c: Container, backend: &dyn Backend, owner: &str) -> OciState {
    let (status, pid) = backend.status(&c);
    let Record {
        id,
        bundle,
        rootfs,
        created,
        annotations,
        runtime,
    } = c.record;
    OciState {
        oci_version: "1.0.2",
        id,
        status,
        pid: pid.unwrap_or(0),
        bundle,
        rootfs,
        created,
        owner: owner.to_string(),
        annotations,
        runtime: runtime.kind(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::runtime::host_process::HostProcess;

    fn runtime(root: &Path) -> Runtime {
        let root = Root::new(root);
        let runc = Runc {
            root: root.runc_root(),
            log: None,
            log_format: None,
        };
        Runtime::new(root, runc)
    }

    /// A stand-in for a VMM process `create` started.
    fn fake_vmm() -> (Child, HostProcess) {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let p = HostProcess::of(child.id() as i32).unwrap();
        (child, p)
    }

    fn record_launch(dir: &Path, vmm: HostProcess) {
        std::fs::create_dir_all(dir).unwrap();
        LaunchRecord {
            launcher: Some(vmm),
            jail_pid_file: None,
        }
        .write(dir)
        .unwrap();
    }

    /// Issue 14 item 8: a `create` killed after it started the VMM but
    /// before it wrote `state.json`. `delete --force` used to remove the
    /// state directory and leave the VMM running with no record; the
    /// launch record, written before readiness, lets it kill the VMM.
    #[test]
    fn delete_force_kills_the_vmm_of_a_create_killed_before_its_record() {
        let root = tempfile::tempdir().unwrap();
        let rt = runtime(root.path());
        let (mut child, vmm) = fake_vmm();
        record_launch(&rt.root.dir("c1"), vmm);
        rt.delete("c1", true).unwrap();
        assert!(!vmm.alive(), "the VMM was killed");
        assert!(!rt.root.dir("c1").exists());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Issue 14 item 8: `delete` while a `create` of the id runs. Without
    /// `--force` it refuses (it used to say "not found" and, with
    /// `--force`, remove the directory from under the `create`, which then
    /// recorded a VM into nothing); with `--force` it kills what the
    /// `create` started and waits for the `create` to clean up.
    #[test]
    fn delete_during_create_refuses_or_stops_it() {
        let root = tempfile::tempdir().unwrap();
        let rt = runtime(root.path());
        let (mut child, vmm) = fake_vmm();
        let dir = rt.root.dir("c1");
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let creator = {
            let root = rt.root.clone();
            let dir = dir.clone();
            std::thread::spawn(move || {
                // `create`: lock, state directory, VMM started and
                // recorded, waiting for readiness that never comes.
                let lock = IdLock::acquire(&root, "c1", Wait::Block).unwrap().unwrap();
                record_launch(&dir, vmm);
                locked_tx.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(20);
                while vmm.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Its VMM died: `create` fails and removes what it made.
                std::thread::sleep(Duration::from_millis(200));
                remove_container_files(&dir, &state::vsock_path(&dir));
                lock.remove();
            })
        };
        locked_rx.recv().unwrap();
        let e = rt.delete("c1", false).unwrap_err().to_string();
        assert!(e.contains("is being created"), "{e}");
        assert!(vmm.alive());
        rt.delete("c1", true).unwrap();
        assert!(!vmm.alive());
        assert!(!dir.exists());
        creator.join().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}
