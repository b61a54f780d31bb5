"""The mount table as /proc/self/mountinfo writes it: escaped paths, a FUSE mount's owner, and
the mount a path is in, all found without asking any file system."""

from __future__ import annotations

from pathlib import Path

from modelkitfs.primitives.mountinfo import MountEntry, mount_above, mount_table

MOUNTINFO = (
    "1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "51 1 0:46 / /mnt/my\\040kit ro,nosuid,nodev,relatime - fuse.modelkitfs "
    "modelkitfs:registry.example/team/llm:v1 ro,user_id=1000,group_id=1000,default_permissions\n"
    "52 1 0:47 / /mnt/other rw - tmpfs tmpfs rw,size=1024k,uid=0\n"
)


def test_paths_are_unescaped_and_a_fuse_mount_names_its_owner(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(MOUNTINFO)
    assert mount_table(str(tmp_path / "mountinfo")) == [
        MountEntry("/", "ext4", "/dev/sda1", "8:1", None),
        MountEntry(
            "/mnt/my kit",
            "fuse.modelkitfs",
            "modelkitfs:registry.example/team/llm:v1",
            "0:46",
            1000,
        ),
        MountEntry("/mnt/other", "tmpfs", "tmpfs", "0:47", None),  # uid= is not user_id=
    ]


def test_the_mount_a_path_is_in() -> None:
    proc = mount_above("/proc/self/status")
    assert proc is not None and proc.mountpoint == "/proc" and proc.fstype == "proc"
    root = mount_above("/")
    assert root is not None and root.mountpoint == "/"
    below = mount_above("/proc")
    assert below is not None and below.mountpoint == "/proc"  # a mountpoint is in its own mount
