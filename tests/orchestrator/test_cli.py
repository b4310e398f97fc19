"""The `referloop` command, run as a user runs it: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import URLSafeSerializer

from orchestrator.schema import DRAFT
from orchestrator.tokens import KEYS_SETTING, SALT, InviteSigner

ROOT = Path(__file__).resolve().parents[2]
TEST_KEY = "test-signing-key-for-cli-0123456789abcd"  # 40 characters
SAMPLE_EMAIL = "dana.reviewer@example.com"

WORKSPACE = """\
name: test workspace
activation:
  property: user.activated_at
fields:
  user:
    first_name: Priya
"""

PLAYBOOK = """\
id: welcome-loop
description: Ask users who shared a report to invite a colleague.
owner: growth
trigger:
  event: report_shared
nudge:
  channel: customerio
  customerio:
    transactional_message: welcome_invite
  invite:
    share: workspace_invite
  trust: They will see the report you shared, and nothing else.
  message:
    body: Hi {{ user.first_name }}, invite a colleague. {{ invite.link }}
"""


def command() -> list[str]:
    """`python -m orchestrator` when the package has a `__main__`, else the script."""
    if (ROOT / "orchestrator" / "__main__.py").is_file():
        return [sys.executable, "-m", "orchestrator"]
    return [str(Path(sys.executable).parent / "referloop")]


def referloop(
    *args: str | Path, cwd: Path, keys: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command in `cwd`, with signing keys only when given."""
    env = {k: v for k, v in os.environ.items() if k != KEYS_SETTING}
    env["COLUMNS"] = "200"
    if keys is not None:
        env[KEYS_SETTING] = keys
    return subprocess.run(
        [*command(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A folder with a workspace and one clean playbook."""
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "referloop.yaml").write_text(WORKSPACE)
    (folder / "welcome-loop.yaml").write_text(PLAYBOOK)
    return folder


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A folder whose one playbook has `holdout: 150%` on line 15."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "referloop.yaml").write_text(WORKSPACE)
    (folder / "welcome-loop.yaml").write_text(PLAYBOOK + "holdout: 150%\n")
    return folder


def invite_token(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


# --- lint -------------------------------------------------------------------------


def test_lint_exits_0_on_a_clean_folder(good: Path, tmp_path: Path) -> None:
    """Nothing to report: exit code 0 and nothing on stderr."""
    result = referloop("lint", good, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def test_lint_exits_1_and_prints_each_problem_at_its_place(
    bad: Path, tmp_path: Path
) -> None:
    """Each problem is one `path:line:column: message` line, as editors link them."""
    result = referloop("lint", bad, cwd=tmp_path)

    assert result.returncode == 1
    expected = f"{bad / 'welcome-loop.yaml'}:15:10: 150% is out of range"
    assert any(line.startswith(expected) for line in result.stdout.splitlines())


def test_lint_exits_2_on_a_path_that_does_not_exist(tmp_path: Path) -> None:
    """Calling the command wrongly is exit code 2, with no traceback."""
    result = referloop("lint", tmp_path / "missing", cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_lint_json_lists_problems_with_lines_and_columns(
    bad: Path, tmp_path: Path
) -> None:
    """`--format json` is one JSON document a tool can read."""
    result = referloop("lint", "--format", "json", bad, cwd=tmp_path)

    report = json.loads(result.stdout)
    assert result.returncode == 1
    problems = [
        (p["path"], p["line"], p["column"], p["severity"]) for p in report["problems"]
    ]
    assert problems == [(str(bad / "welcome-loop.yaml"), 15, 10, "error")]
    assert report["skipped"] == [str(bad / "welcome-loop.yaml")]
    assert report["errors"] == 1


def test_lint_github_prints_annotations(bad: Path, tmp_path: Path) -> None:
    """`--format github` prints workflow commands that annotate the pull request."""
    result = referloop("lint", "--format", "github", bad, cwd=tmp_path)

    path = bad / "welcome-loop.yaml"
    assert result.returncode == 1
    assert result.stdout.startswith(f"::error file={path},line=15,col=10::")


# --- preview ----------------------------------------------------------------------


def test_preview_with_sample_data_shows_the_request_and_the_invite_link(
    good: Path, tmp_path: Path
) -> None:
    """The vendor's URL and the signed invite link are shown; nothing is sent."""
    playbook = good / "welcome-loop.yaml"

    result = referloop("preview", playbook, "--sample", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "POST https://api.customer.io/v1/send/email" in result.stdout
    assert "https://app.example.com/invite?token=" in result.stdout


def test_preview_json_signs_the_invite_with_the_configured_keys(
    good: Path, tmp_path: Path
) -> None:
    """With signing keys set, the link's token verifies and carries no email."""
    # Given signing keys in the environment
    playbook = good / "welcome-loop.yaml"

    # When the preview is asked for as JSON
    result = referloop(
        "preview", playbook, "--format", "json", cwd=tmp_path, keys=TEST_KEY
    )

    # Then the request body is there, and the invite token is genuine and ids-only
    assert result.returncode == 0, result.stderr
    preview = json.loads(result.stdout)
    assert preview["request"]["json"]["to"] == SAMPLE_EMAIL
    token = invite_token(preview["invite_link"])
    signer = InviteSigner.from_env({KEYS_SETTING: TEST_KEY})
    claims = signer.verify(token)
    assert (claims.playbook, claims.referrer) == ("welcome-loop", "u_sample")
    payload = URLSafeSerializer(TEST_KEY, salt=SALT).loads(token)
    assert SAMPLE_EMAIL not in json.dumps(payload)
    assert preview["signed_with_throwaway_key"] is False


def test_preview_with_a_user_file_overrides_the_sample_fields(
    good: Path, tmp_path: Path
) -> None:
    """`--user FILE` replaces the workspace's sample first name."""
    user = tmp_path / "ada.yaml"
    user.write_text("user:\n  first_name: Ada\n")
    playbook = good / "welcome-loop.yaml"

    result = referloop(
        "preview", playbook, "--user", user, "--format", "json", cwd=tmp_path
    )

    body = json.loads(result.stdout)["message"]["body"]
    assert result.returncode == 0, result.stderr
    assert body.startswith("Hi Ada, invite a colleague.")
    assert "Priya" not in body


def test_preview_with_both_user_and_sample_is_a_usage_error(
    good: Path, tmp_path: Path
) -> None:
    """Exit code 2 and one `error:` line, never a traceback."""
    user = tmp_path / "ada.yaml"
    user.write_text("user:\n  first_name: Ada\n")
    playbook = good / "welcome-loop.yaml"

    result = referloop("preview", playbook, "--user", user, "--sample", cwd=tmp_path)

    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stdout + result.stderr


def test_preview_of_a_broken_playbook_prints_its_problems_and_exits_1(
    bad: Path, tmp_path: Path
) -> None:
    """The problem is shown as `error: path:line:column: ...`, no traceback."""
    playbook = bad / "welcome-loop.yaml"

    result = referloop("preview", playbook, "--sample", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {playbook}:15:10: ")
    assert "Traceback" not in result.stderr


def test_preview_of_a_template_that_fails_while_rendering_prints_one_error(
    good: Path, tmp_path: Path
) -> None:
    """A loop past Liquid's iteration limit is the author's to fix: no traceback."""
    # Given a playbook whose body only fails when it is rendered
    loop = "{% for i in (1..5000) %}x{% endfor %}"
    text = PLAYBOOK.replace("{{ user.first_name }}", loop)
    playbook = good / "welcome-loop.yaml"
    playbook.write_text(text)

    # When it is previewed
    result = referloop("preview", playbook, "--sample", cwd=tmp_path)

    # Then the command fails with `error:` lines only
    lines = result.stderr.splitlines()
    assert result.returncode == 1
    assert lines
    assert all(line.startswith("error: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr


# --- schema -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "title"),
    [((), "Playbook"), (("playbook",), "Playbook"), (("workspace",), "Workspace")],
)
def test_schema_prints_a_json_schema(
    tmp_path: Path, args: tuple[str, ...], title: str
) -> None:
    """The playbook schema by default, the workspace schema on request."""
    result = referloop("schema", *args, cwd=tmp_path)

    schema = json.loads(result.stdout)
    assert result.returncode == 0
    assert schema["$schema"] == DRAFT
    assert schema["title"] == title
