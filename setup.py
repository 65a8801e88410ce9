"""Maps the top-level folders onto the `meshsec.*` import namespace.

The repository keeps `agent/`, `controller/`, `proto/` ... at the top for readability, but a
distribution that installed a top-level package called `agent` would collide with anything else
on a user's machine, so every folder is installed under `meshsec.`.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "meshsec.common": "common",
    "meshsec.agent": "agent",
    "meshsec.controller": "controller",
    "meshsec.meshctl": "meshctl",
    "meshsec.v1": "proto/meshsec/v1",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder)
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages, package_dir


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"meshsec.v1": ["*.proto", "*.pyi", "py.typed"]},
)
