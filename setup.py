"""Installs the core package ``kdreid`` and the three project packages.

Each project keeps its package beside its README and ``train_net.py`` (detectron2's ``projects/``
layout); ``package_dir`` maps the import names to those folders, so no ``sys.path`` edits are
needed. fastreid itself is installed separately with ``--no-deps`` (its wheel pins torch 1.13):
see the Makefile.
"""

from setuptools import find_packages, setup

PROJECTS = {
    "mdpr": "projects/MDPR/mdpr",
    "factorized_kd": "projects/FactorizedKD/factorized_kd",
    "speed_kd": "projects/SpeedKD/speed_kd",
}

with open("requirements.txt") as f:
    requirements = [
        line.strip() for line in f if line.strip() and not line.startswith(("#", "torch"))
    ]

setup(
    name="kdreid",
    version="0.1.0",
    description="Knowledge distillation for person re-identification, as a FastReID plugin",
    python_requires=">=3.10",
    packages=find_packages(include=["kdreid", "kdreid.*"])
    + [
        f"{name}.{sub}" if sub else name
        for name, path in sorted(PROJECTS.items())
        for sub in ["", *find_packages(path)]
    ],
    package_dir=PROJECTS,
    # The torch range that is tested (requirements.txt pins 2.14.1), not one merely hoped for:
    # weights are read with weights_only=True, and torch < 2.6 would unpickle by default where
    # any of FastReID's loads escaped kdreid's repairs.
    install_requires=requirements + ["torch>=2.14,<2.15", "torchvision>=0.29,<0.30"],
    extras_require={"gpu": ["faiss-gpu"]},
    entry_points={
        # What each project plugs into the core (kdreid.projects.Project: its config keys and
        # checks): get_cfg() adds every installed project's keys, so any project's config (a
        # teacher's, say) loads wherever kdreid runs.
        "kdreid.projects": [
            "mdpr = mdpr.config:PROJECT",
            "factorized_kd = factorized_kd.config:PROJECT",
            "speed_kd = speed_kd.config:PROJECT",
        ],
    },
)
