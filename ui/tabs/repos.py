"""Repos: the watched repositories (add with a folder picker, remove), and the dataset built from them."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ui.tabs.base import Tab
from ui.widgets import fill_table, human_bytes, make_table, selected_key, short_commit

COLUMNS = ("Name", "Path", "Ref", "Include", "Exclude", "Last indexed", "Head", "Files", "Size", "Problem")


def split_globs(text: str) -> list[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def _count(value: Any) -> tuple[int, str]:
    """A stats entry as (sort key, text): a plain count, or ``{"files", "bytes"}`` per language."""
    if isinstance(value, dict):
        files = int(value.get("files", 0) or 0)
        size = f" ({human_bytes(value['bytes'])})" if isinstance(value.get("bytes"), int | float) else ""
        return files, f"{files} files{size}"
    if isinstance(value, int | float):
        return int(value), str(value)
    return 0, str(value)


def _counts(values: dict[str, Any] | None, limit: int = 6) -> str:
    if not values:
        return "–"
    top = sorted(((k, *_count(v)) for k, v in values.items()), key=lambda kv: -kv[1])
    text = ", ".join(f"{name} {label}" for name, _, label in top[:limit])
    return text + (f", +{len(top) - limit} more" if len(top) > limit else "")


class ReposTab(Tab):
    title = "Repos"
    kinds = frozenset({"repo", "job", "model", "settings"})

    def __init__(self, backend: Any, parent: QWidget | None = None) -> None:
        super().__init__(backend, parent)
        self.repos: list[Any] = []
        self.dataset: Any = None
        self.table = make_table(COLUMNS)

        add_box = QGroupBox("Add a repository")
        form = QFormLayout(add_box)
        path_row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("folder of a git clone (working tree or bare)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        path_row.addWidget(self.path_edit)
        path_row.addWidget(browse)
        form.addRow("Folder", path_row)
        self.ref_edit = QLineEdit()
        self.ref_edit.setPlaceholderText("default branch")
        form.addRow("Ref", self.ref_edit)
        self.include_edit = QLineEdit()
        self.include_edit.setPlaceholderText("e.g. src/**, *.py (empty: everything)")
        form.addRow("Include", self.include_edit)
        self.exclude_edit = QLineEdit()
        self.exclude_edit.setPlaceholderText("e.g. vendor/**, *_pb2.py")
        form.addRow("Exclude", self.exclude_edit)
        self.add_button = QPushButton("Add repository")
        self.add_button.clicked.connect(self.add_from_form)
        form.addRow(self.add_button)

        buttons = QHBoxLayout()
        self.remove_button = QPushButton("Remove selected")
        self.remove_button.clicked.connect(self.remove_selected)
        self.check_button = QPushButton("Check for changes now")
        self.check_button.clicked.connect(self.check_now)
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.check_button)
        buttons.addStretch(1)

        dataset_box = QGroupBox("Dataset")
        dform = QFormLayout(dataset_box)
        self.dataset_labels: dict[str, QLabel] = {}
        for key, label in (
            ("version", "Version"),
            ("files", "Files kept"),
            ("size", "Size"),
            ("dropped", "Files dropped"),
            ("languages", "Languages"),
            ("redactions", "Secrets redacted"),
            ("changes", "Changed since serving model"),
            ("decision", "Retrain policy"),
        ):
            self.dataset_labels[key] = QLabel("–")
            self.dataset_labels[key].setWordWrap(True)
            dform.addRow(label, self.dataset_labels[key])

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table)
        top_layout.addLayout(buttons)
        bottom = QWidget()
        bottom_layout = QHBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(add_box, 1)
        bottom_layout.addWidget(dataset_box, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # -- actions ----------------------------------------------------------------------------------------------
    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Pick the folder of a git repository")
        if folder:
            self.path_edit.setText(folder)
            self.add_from_form()

    def add_from_form(self) -> None:
        path = self.path_edit.text().strip()
        if not path:
            self.backend.error.emit("Pick a folder", "Choose the folder of a git repository to add.")
            return
        self.add_repo(
            path,
            ref=self.ref_edit.text().strip() or None,
            include=split_globs(self.include_edit.text()),
            exclude=split_globs(self.exclude_edit.text()),
        )

    def add_repo(
        self, path: str, ref: str | None = None, include: list[str] | None = None, exclude: list[str] | None = None
    ) -> None:
        self.add_button.setEnabled(False)

        def done(_: Any) -> None:
            self.add_button.setEnabled(True)
            self.path_edit.clear()
            self.refresh()

        def failed(title: str, message: str) -> None:
            self.add_button.setEnabled(True)
            self.backend.error.emit(title, message)

        self.backend.call(
            "add_repo", path, ref=ref, include=include or None, exclude=exclude or None, on_done=done, on_error=failed
        )

    def check_now(self) -> None:
        self.call("check_for_changes", on_done=lambda _: self.refresh())

    def remove_selected(self) -> None:
        name = selected_key(self.table)
        if name is not None:
            self.call("remove_repo", name, on_done=lambda _: self.refresh())

    # -- loading ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.call("list_repos", on_done=self._show_repos)
        self.call("dataset", on_done=self._show_dataset)

    def _show_repos(self, repos: list[Any]) -> None:
        self.repos = list(repos)
        rows = [
            (
                r.name,
                r.path,
                r.ref,
                ", ".join(r.include) or "everything",
                ", ".join(r.exclude) or "–",
                short_commit(r.last_indexed_commit),
                short_commit(r.head_commit),
                "–" if r.files_kept is None else r.files_kept,
                human_bytes(r.bytes_kept),
                r.problem or "",
            )
            for r in self.repos
        ]
        fill_table(self.table, rows, keys=[r.name for r in self.repos])
        self.loaded()

    def _show_dataset(self, info: Any) -> None:
        self.dataset = info
        labels = self.dataset_labels
        labels["version"].setText(info.version or "not built yet")
        labels["files"].setText(str(info.files_kept))
        labels["size"].setText(human_bytes(info.bytes_kept))
        labels["dropped"].setText(f"{info.files_dropped}" + (f" ({_counts(info.dropped)})" if info.dropped else ""))
        labels["languages"].setText(_counts(info.languages))
        labels["redactions"].setText(_counts(info.redactions))
        labels["changes"].setText(f"{info.changed_files_since_serving} files, {info.changed_lines_since_serving} lines")
        labels["decision"].setText(info.retrain_decision)
        self.loaded()
