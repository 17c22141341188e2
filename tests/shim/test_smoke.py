from support import Shim


def test_state_of_a_created_container_passes_through(shim: Shim) -> None:
    bundle = shim.bundle()
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    out = shim.run("state", "c1")
    assert out.returncode == 0, out.stderr
    assert b'"status": "created"' in out.stdout
