"""Start-up checks: the service refuses to start with a secret anyone could know, or with a bot
backend configuration it could only fail on later (a Kubernetes pod template that is no pod).

`secret_problems(settings)` is a plain function: the Django system check (registered by
botmanager/apps.py, so `manage.py check`, `migrate` and `runserver` fail), gunicorn's master
(`on_starting` in botmanager/gunicorn_conf.py) and every Celery process (botmanager/celery.py) run
it before serving anything.
"""
from __future__ import annotations

from django.core import checks

# Values that shipped in this repository (settings defaults, the compose file) or in Django's
# project template: public, so they authenticate nobody.
KNOWN_VALUES = frozenset({
    "dev-insecure-secret-key-change-me-in-production-0123456789",
    "change-me-compose-secret-key-0123456789abcdef0123456789",
    "dev-admin-token",
    "change-me-admin-token",
    "changeme", "change-me", "secret", "password",
})
MIN_LENGTH = 32
MIN_DISTINCT = 10
SECRETS = ("SECRET_KEY", "BOT_TOKEN_SECRET", "ADMIN_API_TOKEN")
HOW = ("set it in the environment to a long random value (python -c \"import secrets; "
       "print(secrets.token_urlsafe(48))\"); `make run` generates one into RUN_DIR/secrets.json")


def secret_problems(settings) -> list[str]:
    problems = []
    values = {}
    for name in SECRETS:
        try:
            value = getattr(settings, name, "") or ""
        except Exception:  # Django's LazySettings raises for an empty SECRET_KEY
            value = ""
        values[name] = value
        if not value:
            problems.append(f"{name} is not set: {HOW}.")
        elif value in KNOWN_VALUES or value.startswith("django-insecure-") or "change-me" in value:
            problems.append(f"{name} is a publicly known value: {HOW}.")
        elif len(value) < MIN_LENGTH or len(set(value)) < MIN_DISTINCT:
            problems.append(f"{name} is too short or too repetitive (at least {MIN_LENGTH} characters, "
                            f"{MIN_DISTINCT} distinct): {HOW}.")
    if values["BOT_TOKEN_SECRET"] and values["BOT_TOKEN_SECRET"] in (values["SECRET_KEY"], values["ADMIN_API_TOKEN"]):
        problems.append("BOT_TOKEN_SECRET must differ from SECRET_KEY and ADMIN_API_TOKEN: a leak of one "
                        f"must not forge the other; {HOW}.")
    return problems


def orchestrator_problems(settings) -> list[str]:
    """What is wrong with the backend's own files, found now rather than as a failed launch later."""
    if getattr(settings, "ORCHESTRATOR", "") == "kubernetes":
        from orchestrators.kubernetes import load_pod_template

        try:
            load_pod_template(settings.KUBERNETES_POD_TEMPLATE)
        except ValueError as exc:
            return [str(exc)]
    return []


def check_orchestrator(app_configs=None, **kwargs):
    from django.conf import settings

    return [checks.Error(problem, id="botmanager.E002") for problem in orchestrator_problems(settings)]


def check_secrets(app_configs=None, **kwargs):
    from django.conf import settings

    return [checks.Error(problem, id="botmanager.E001") for problem in secret_problems(settings)]


def refuse_to_start(what: str) -> None:
    """Exit with the problems on stderr (for gunicorn's master and the Celery processes)."""
    import sys

    from django.conf import settings

    problems = secret_problems(settings) + orchestrator_problems(settings)
    if problems:
        print(f"{what} refuses to start:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr, flush=True)
        raise SystemExit(78)  # EX_CONFIG


def connect_celery() -> None:
    """Celery worker and beat exit at start-up on a secret problem (SystemExit passes through
    Celery's signal dispatch, which only catches Exception)."""
    from celery.signals import beat_init, worker_init

    def _check(**kwargs):
        refuse_to_start("Celery")

    worker_init.connect(_check, weak=False)
    beat_init.connect(_check, weak=False)
