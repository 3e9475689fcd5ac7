"""Where a study lives: an Optuna storage (SQLite by default, a database URL for many workers), passwords hidden."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import optuna

from nesfgen.errors import UserError
from nesfgen.tune.study import StudySpec, make_pruner, make_sampler

#: ``scheme:`` at the start of a storage= value: a URL was meant (two letters at least, so not a drive letter).
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
STORAGE_FORMS = "a database URL such as postgresql://user:password@host/db or sqlite:///study.db, or a file path"


def storage_url(spec: StudySpec, storage: str | None = None) -> str:
    """The storage URL: the one given, a file path as SQLite, else ``runs/tune-NAME/study.db``.

    Raises:
        UserError: for a value that starts like a URL but is not one (``postgresql:/host/db``), which would
            otherwise become a SQLite file of that name.
    """
    if storage and URL_SCHEME.match(storage):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(storage)
        except ArgumentError:
            url = None
        if url is None or "://" not in storage:
            raise UserError(f"storage={redact(storage)} is not a valid database URL; give {STORAGE_FORMS}")
        return storage
    path = Path(storage) if storage else spec.folder / "study.db"
    return f"sqlite:///{path.resolve()}"


def redact(url: str) -> str:
    """A storage URL fit to print or log: its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL: hide whatever sits between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def open_storage(spec: StudySpec, storage: str | None = None, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat, so a killed worker's trial is failed and queued again."""
    url = storage_url(spec, storage)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise UserError(f"no study database at {path}; run `nesfgen tune study={spec.name}` first")
        path.parent.mkdir(parents=True, exist_ok=True)
    # SQLite: wait for the other workers' write locks instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.retries)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=spec.heartbeat_seconds,
                    grace_period=spec.grace_seconds,
                    heartbeat_stale_trial_callback=retry,
                )
        except Exception as error:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            # Workers starting together race to create the tables: the loser finds them made and retries.
            if any(race in str(error) for race in ("already exists", "UNIQUE constraint", "locked")) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = str(error).splitlines()[0]
            password = _password(url)
            if password:
                reason = reason.replace(password, "***")
            raise UserError(f"storage {redact(url)!r} cannot be opened ({reason}); give {STORAGE_FORMS}") from None
    raise AssertionError("unreachable")


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def open_study(spec: StudySpec, storage: str | None = None, create: bool = True) -> optuna.Study:
    """Create the study in its storage, or join it when it exists (same name, same objectives)."""
    rdb = open_storage(spec, storage, create)
    try:
        if create:
            study = optuna.create_study(
                study_name=spec.name,
                storage=rdb,
                directions=spec.directions,
                sampler=make_sampler(spec, 0),  # a running worker seeds its own (tune.trials.run_study)
                pruner=make_pruner(spec),
                load_if_exists=True,
            )
        else:
            study = optuna.load_study(study_name=spec.name, storage=rdb, pruner=make_pruner(spec))
    except KeyError:
        raise UserError(
            f"storage {redact(rdb.url)} holds no study {spec.name!r}; run `nesfgen tune study={spec.name}` first"
        ) from None
    found = [d.name.lower() for d in study.directions]
    if found != spec.directions:
        raise UserError(
            f"study {spec.name!r} in {redact(rdb.url)} optimises {found}, but {spec.path} asks for {spec.directions}; "
            "give the changed study another name"
        )
    if create and "study_file" not in study.user_attrs:
        study.set_user_attr("study_file", spec.path.read_text())
        if spec.baseline is not None:
            study.enqueue_trial(spec.baseline, user_attrs={"baseline": True}, skip_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in spec.objectives])  # shown by optuna-dashboard
    return study
