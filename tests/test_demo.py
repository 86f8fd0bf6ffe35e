"""`make demo` is the README's first command: it must run and print the table of expected answers."""
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo.py"
ROLLOUT_DEMO = Path(__file__).resolve().parent / "demo_rollout.py"


def test_demo_runs_and_every_answer_is_as_expected():
    out = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "UNEXPECTED" not in out.stdout
    for row in ["valid token ", "expired token", "wrong audience", "wrong issuer", "bad signature", "missing token"]:
        assert row in out.stdout, out.stdout
    assert 'meshward_jwt_denied_total{reason="expired"} 1' in out.stdout


def test_demo_token_is_accepted_shape():
    out = subprocess.run([sys.executable, str(DEMO), "--token"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.count(".") == 2, out


def test_the_rollout_demo_promotes_the_service_by_the_gate():
    out = subprocess.run([sys.executable, str(ROLLOUT_DEMO)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and "every answer as expected" in out.stdout, out.stdout + out.stderr
    assert "UNEXPECTED" not in out.stdout
    # Each stage answered in the table; the gate said no, then yes; the promotion took effect.
    for reason in ["bad_signature", "tenant_boundary", "replayed", "rate_limited", "OVER BUDGET", "ready: every stage",
                   "promoted", "invalid_parameter", "routes seen but not in the contract: 2"]:
        assert reason in out.stdout, (reason, out.stdout)
