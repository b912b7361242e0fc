"""Packages: the code under entrainment_cli/, and the top-level assets/ (bundled samples, prompt
templates) shipped inside it as entrainment_cli/assets (pyproject.toml cannot add a mapped
package to a found list)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["entrainment_cli*"]), "entrainment_cli.assets"],
    package_dir={"entrainment_cli.assets": "assets"},
    package_data={"entrainment_cli.assets": ["**/*"]},
)
