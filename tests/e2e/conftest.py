"""One real ComfyUI server for the whole e2e session, on a free loopback port, with the pack linked in."""
import pytest

from devkit.harness import ComfyServer


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = ComfyServer(tmp_path_factory.mktemp("comfy_server"))
    yield srv
    srv.stop()
