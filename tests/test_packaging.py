import tomllib

import yaml

from .conftest import ROOT


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.update(extra)
    return requirements


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert set(pip) - {"-e ."} == pyproject_requirements()


def test_torch_is_pinned_to_the_locally_served_build():
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= pyproject_requirements()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/test" in readme and "scripts/demo" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
