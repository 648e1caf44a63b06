"""Shared by every test: a test that leaves ScriptedProvider steps unconsumed fails
(``astromesh_ray.testing.pytest_plugin``; opt out with ``discard_remaining()`` or
``@pytest.mark.allow_unconsumed_steps(reason=...)``).  ``pytester`` tests the plugin."""

pytest_plugins = ["astromesh_ray.testing.pytest_plugin", "pytester"]
