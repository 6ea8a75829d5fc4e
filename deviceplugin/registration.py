"""Serving the plugin socket, registering with kubelet, and doing both again after a kubelet restart.

Kubelet's contract (reference/deviceplugin-api.md): the plugin serves on a socket inside the
device-plugin directory BEFORE calling Register on `kubelet.sock`; a restarting kubelet deletes every
socket file in that directory and recreates `kubelet.sock`. `PluginRunner` polls both files
(default every 0.5 s) and, when its own socket vanished or `kubelet.sock` is a new file, starts a
fresh server and registers again - well inside the 5 s the issue asks for.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable

import grpc

from tensorai.deviceplugin.service import DevicePluginServicer, PluginServer
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_SOCKET_NAME = "tensor-ai-vgpu.sock"


class RegistrationError(RuntimeError):
    """kubelet refused or could not be reached; the message carries kubelet's reason."""


class PluginDirLocked(RuntimeError):
    """Another plugin process already serves this socket name in this device-plugin directory."""


def lock_path(plugin_dir: str, socket_name: str) -> str:
    """The lock file beside our socket. A regular file: kubelet's restart deletes only sockets there."""
    return os.path.join(plugin_dir, socket_name + ".lock")


def register(
    kubelet_socket: str,
    endpoint: str,
    options: dp.DevicePluginOptions,
    *,
    resource_name: str = contract.RESOURCE_VGPU_MILLI,
    timeout_s: float = 15.0,
) -> None:
    """Call kubelet's Registration.Register (kubelet dials back and asks our options before answering)."""
    try:
        with grpc.insecure_channel(f"unix://{kubelet_socket}") as channel:
            grpc.channel_ready_future(channel).result(timeout=min(timeout_s, 5.0))
            dp_grpc.RegistrationStub(channel).Register(
                dp.RegisterRequest(version=API_VERSION, endpoint=endpoint, resource_name=resource_name,
                                   options=options),
                timeout=timeout_s,
            )
    except grpc.FutureTimeoutError as error:
        raise RegistrationError(f"kubelet socket {kubelet_socket} does not answer") from error
    except grpc.RpcError as error:
        raise RegistrationError(f"kubelet refused registration: {error.code().name}: {error.details()}") from error


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns)


class PluginRunner:
    """Keeps the plugin served and registered across kubelet restarts until `stop`."""

    def __init__(
        self,
        servicer: DevicePluginServicer,
        plugin_dir: str = DEFAULT_PLUGIN_DIR,
        *,
        socket_name: str = DEFAULT_SOCKET_NAME,
        resource_name: str = contract.RESOURCE_VGPU_MILLI,
        poll_interval_s: float = 0.5,
        on_registered: Callable[[], None] | None = None,
    ) -> None:
        self.servicer = servicer
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        self.resource_name = resource_name
        self.poll_interval_s = poll_interval_s
        self.on_registered = on_registered
        self.registrations = 0
        self.last_error: str | None = None
        self._server: PluginServer | None = None
        self._kubelet_id: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._lock_fd: int | None = None

    @property
    def socket_path(self) -> str:
        return os.path.join(self.plugin_dir, self.socket_name)

    @property
    def kubelet_socket(self) -> str:
        return os.path.join(self.plugin_dir, KUBELET_SOCKET)

    def take_lock(self) -> None:
        """Hold the directory's lock for our socket name until `stop`, or raise PluginDirLocked.

        Two plugins on one directory would each see the other's socket replace its own and serve a
        fresh one, forever (the `socket_intact` check below is meant for kubelet's restarts). flock
        is released by the kernel when the holder dies, so a crashed plugin never blocks its successor."""
        if self._lock_fd is not None:
            return
        os.makedirs(self.plugin_dir, exist_ok=True)
        path = lock_path(self.plugin_dir, self.socket_name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise PluginDirLocked(f"another device plugin (pid {holder}) already serves {self.socket_name} in "
                                  f"{self.plugin_dir} (lock {path}); stop it first, or give this one another "
                                  "--device-plugin-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = None

    def start(self) -> PluginRunner:
        """Serve now (raises if the directory is unusable or locked by another plugin); register in the background."""
        self.take_lock()
        self._server = PluginServer(self.servicer, self.socket_path).start()
        self._thread = threading.Thread(target=self._loop, name="registration", daemon=True)
        self._thread.start()
        return self

    def wait_registered(self, count: int = 1, timeout_s: float = 10.0) -> bool:
        """Block until at least `count` successful registrations happened."""
        with self._changed:
            return self._changed.wait_for(lambda: self.registrations >= count, timeout=timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as error:  # never let the loop die: the next poll retries
                log.exception("registration loop: %s", error)
            self._stop.wait(self.poll_interval_s)

    def _step(self) -> None:
        assert self._server is not None
        if not self._server.socket_intact():
            log.warning("plugin socket %s disappeared (kubelet restart?): serving a fresh one", self.socket_path)
            self._server.stop(grace_s=0.1)
            self._server = PluginServer(self.servicer, self.socket_path).start()
            self._kubelet_id = None
        kubelet_id = _file_id(self.kubelet_socket)
        if kubelet_id is None or kubelet_id == self._kubelet_id:
            return
        try:
            register(self.kubelet_socket, self.socket_name, self.servicer.manager.options(),
                     resource_name=self.resource_name)
        except RegistrationError as error:
            if self.last_error != str(error):
                log.warning("%s; retrying every %.1f s", error, self.poll_interval_s)
            self.last_error = str(error)
            return
        self.last_error = None
        self._kubelet_id = kubelet_id
        log.info("registered %s with kubelet at %s", self.resource_name, self.kubelet_socket)
        with self._changed:
            self.registrations += 1
            self._changed.notify_all()
        if self.on_registered is not None:
            self.on_registered()

    def stop(self) -> None:
        """Stop re-registering, end the streams and remove our socket (SIGTERM path)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.servicer.stop_streams()
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._release_lock()
