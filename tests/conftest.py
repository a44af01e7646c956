# Fixtures live in plugin modules; this file only registers them.
pytest_plugins = [
    "tests.plugins.services",
    "tests.plugins.processes",
    "tests.plugins.prometheus",
]
