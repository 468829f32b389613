"""kdreid.projects: every installed project is found through its entry point alone."""

from importlib.metadata import entry_points

from kdreid import projects
from kdreid.config import get_cfg


def test_each_entry_point_is_a_project_of_its_package():
    found = {ep.name: ep for ep in entry_points(group=projects.ENTRY_POINT_GROUP)}
    assert set(found) == {"mdpr", "factorized_kd", "speed_kd"}
    assert all(isinstance(ep.load(), projects.Project) for ep in found.values())
    assert len(projects.installed()) == len(found)


def test_the_loggers_are_the_core_and_the_installed_packages():
    assert projects.logger_names() == ("kdreid", "factorized_kd", "mdpr", "speed_kd")


def test_every_project_adds_its_keys_and_checks():
    cfg = get_cfg()
    assert {"MDPR", "FKD", "SPEEDKD"} <= set(cfg.MODEL)
    for project in projects.installed():
        assert callable(project.add_config)
        assert project.check_config is None or callable(project.check_config)
