"""Discover the cases of a data set (nnU-Net folder, plain folder of volumes, or one file).

Layouts:
  * nnU-Net v2: ``imagesTr/CASE_0000.nii.gz`` (one file per channel: ``CASE_0000``, ``CASE_0001``,
    ... for several contrasts, named by dataset.json ``channel_names``; a case without some channel's
    file lacks that contrast: the trainers take it as missing, other commands refuse it),
    ``labelsTr/CASE.nii.gz`` and
    ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``, ``file_ending``), and optional
    ``masksTr/CASE.nii.gz`` missing-voxel masks (1 = missing) for incomplete volumes; without
    dataset.json (or its ``labels``) the label names are inferred from the label maps when they are
    read (``Dataset.labels_inferred``);
  * a plain folder of .nii/.nii.gz files and/or subfolders each holding one DICOM series
    (a folder that directly holds DICOM files is one case); several contrasts per case as DICOM:
    a folder per case holding one series folder per contrast, named after it
    (``DATA/CASE/t1/*.dcm``, ``DATA/CASE/flair/*.dcm``): the channels are the folder names (in
    alphabetical order), a case without some contrast's folder lacks that contrast;
  * 2D images: a folder of .png/.jpg/.tif files or single-frame 2D DICOM files (CR, DX, MG, ...),
    each one case, or class folders of them (``DATA/normal/*.png``, ``DATA/pneumonia/*.png``: the
    folder name is the case's class, ``Case.group``); nnU-Net's 2D layout
    (``imagesTr/CASE_0000.png``, ``labelsTr/CASE.png``) as above. 2D and 3D cases in one data set
    are an error;
  * a single volume or image file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import label_values, summarise
from ldmtool.io.dicom import _read_header, is_dicom_file
from ldmtool.io.image2d import IMAGE_SUFFIXES, is_2d_dicom_header, is_image_path
from ldmtool.io.nifti import is_nifti_path
from ldmtool.io.readers import read_volume
from ldmtool.io.volume import Volume

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
AFFINE_TOL = 1e-3


@dataclass(frozen=True)
class Case:
    """One training case: an image volume and, for labelled data sets, its label map."""

    case_id: str
    image: Path  # the image file (of a multi-channel case: its first channel that has a file)
    label: Path | None = None
    missing: Path | None = None  # masksTr/CASE: 1 = missing voxel (incomplete acquisitions)
    group: str | None = None  # the class folder a 2D image sits in (DATA/CLASS/IMAGE), else None
    more_channels: tuple[Path, ...] = ()  # the files of its other channels, in channel order
    absent: tuple[int, ...] = ()  # the channels without a file (contrasts not acquired)

    @property
    def channel_files(self) -> tuple[Path | None, ...]:
        """The case's file of every channel in channel order, None where it has none (one entry
        for a single-channel case)."""
        present = iter((self.image, *self.more_channels))
        n = 1 + len(self.more_channels) + len(self.absent)
        return tuple(None if c in self.absent else next(present) for c in range(n))


@dataclass
class Dataset:
    """The cases of a data set and its channel/label names (from nnU-Net's dataset.json)."""

    root: Path
    cases: list[Case]
    channel_names: dict[str, str] = field(default_factory=dict)
    label_names: dict[str, int] = field(default_factory=dict)
    layout: str = "folder"  # "nnunet", "folder" or "file"
    labels_inferred: bool = False  # labelsTr/ without dataset.json labels: names come from the values found
    image_dims: int = 3  # 2 for a data set of 2D images (PNG/JPEG/TIFF, 2D DICOM), else 3

    @property
    def channels(self) -> int:
        """Image channels per case (contrasts: T1, T2, FLAIR, ...)."""
        return len(self.cases[0].channel_files) if self.cases else 1

    @property
    def channel_list(self) -> list[str]:
        """The channel names in channel order (dataset.json ``channel_names``; "image" when unnamed)."""
        n = self.channels
        if n == 1:
            return [self.channel_names.get("0", "image")] if self.channel_names else ["image"]
        return [self.channel_names.get(str(c), f"channel_{c:04d}") for c in range(n)]

    @property
    def classes(self) -> dict[str, str]:
        """{case id: class name} from class folders (empty when the cases sit in no class folder)."""
        return {c.case_id: c.group for c in self.cases if c.group is not None}

    @property
    def has_labels(self) -> bool:
        """True if every case has a label map."""
        return bool(self.cases) and all(c.label is not None for c in self.cases)

    def read(self, case: Case, series_uid: str | None = None, allow_nan: bool = False) -> tuple[Volume, Volume | None]:
        """Read and check one case's image and label (see :func:`read_case`); `allow_nan` lets NaN
        image voxels through (missing data), a channel without a file among them (all NaN); without
        it such a case is an error."""
        if case.absent and not allow_nan:
            c = case.absent[0]
            raise LdmError(
                f"case {case.case_id} has no channel {c:04d} ({self.channel_list[c]}) file; this command needs "
                "every channel of every case (impute --missing-channel fills one in)"
            )
        return read_case(case, self.label_names if self.label_names else None, series_uid, allow_nan)

    def absent_summary(self) -> str | None:
        """One line on the cases that lack a channel's file (None when every case has every channel)."""
        lacking = [c for c in self.cases if c.absent]
        if not lacking:
            return None
        names = self.channel_list
        per_channel = {c: sum(c in case.absent for case in lacking) for c in range(len(names))}
        counts = ", ".join(f"{names[c]} of {k} case{'s' * (k != 1)}" for c, k in per_channel.items() if k)
        return (
            f"{len(lacking)} of {len(self.cases)} cases lack a channel's file ({counts}, e.g. {lacking[0].case_id}): "
            "trained with those channels missing (no voxel observed)"
        )

    def read_missing(self, case: Case, image: Volume) -> np.ndarray | None:
        """The case's missing-voxel mask (masksTr/, 1 = missing) as bool, checked against its image."""
        if case.missing is None:
            return None
        mask = read_aligned(case.missing, image, f"missing-voxel mask of {case.case_id}")
        values = np.asarray(mask.array)
        if not np.isin(values, (0, 1)).all():
            raise LdmError(f"missing-voxel mask of {case.case_id} must hold 0 (observed) and 1 (missing) only")
        return values.astype(bool)


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if ending and name.lower().endswith(ending.lower()) else name


def _volume_id(name: str) -> str:
    """Case id of a NIfTI or image file name: the name without .nii/.nii.gz/.png/..."""
    for ending in (".nii.gz", ".nii", *IMAGE_SUFFIXES, ".dcm"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def _read_dataset_json(path: Path) -> dict:
    """Parse dataset.json into a dict, with one-line errors for missing or malformed files."""
    if not path.is_file():
        raise LdmError(f"{path} is missing; an nnU-Net data set with labelsTr needs its dataset.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LdmError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LdmError(f"{path} must hold a JSON object")
    return data


def _parse_labels(raw, source: Path) -> dict[str, int]:
    """nnU-Net labels as {name: value}; accepts v2 ({"background": 0}) and v1 ({"0": "background"})."""
    if not isinstance(raw, dict) or not raw:
        raise LdmError(f'{source}: \'labels\' must be a non-empty object such as {{"background": 0, "lesion": 1}}')
    if all(isinstance(v, str) for v in raw.values()) and all(str(k).isdigit() for k in raw):
        raw = {v: int(k) for k, v in raw.items()}  # nnU-Net v1 style
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise LdmError(
                f"{source}: label {name!r} has value {value!r}; ldmtool needs one integer per "
                "label (region-based labels are not supported)"
            )
        labels[str(name)] = value
    if len(set(labels.values())) != len(labels):
        shared = sorted({v for v in labels.values() if list(labels.values()).count(v) > 1})
        names = [n for n, v in labels.items() if v in shared]
        raise LdmError(f"{source}: several labels share a value ({summarise(names, 4)} share {summarise(shared)})")
    return labels


def _load_nnunet(root: Path) -> Dataset:
    """An nnU-Net v2 raw data set folder (imagesTr, optional labelsTr, dataset.json)."""
    images_dir, labels_dir, json_path = root / "imagesTr", root / "labelsTr", root / "dataset.json"
    info = _read_dataset_json(json_path) if json_path.exists() else {}
    ending = str(info.get("file_ending", _guess_ending(images_dir)))
    raw_channels = info.get("channel_names", info.get("modality")) or {}
    if not isinstance(raw_channels, dict):
        raise LdmError(f'{json_path}: \'channel_names\' must be an object such as {{"0": "CT"}}')
    channel_names = {str(k): str(v) for k, v in raw_channels.items()}
    if channel_names and sorted(channel_names, key=_channel_key) != [str(c) for c in range(len(channel_names))]:
        raise LdmError(
            f'{json_path}: \'channel_names\' must be numbered 0, 1, 2, ... (e.g. {{"0": "T1", "1": "FLAIR"}}); '
            f"got {', '.join(sorted(channel_names, key=_channel_key))}"
        )
    label_names = _parse_labels(info["labels"], json_path) if "labels" in info else {}

    files: dict[str, dict[int, Path]] = {}  # case -> channel -> file
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or not f.is_file() or not f.name.lower().endswith(ending.lower()):
            continue
        m = _CHANNEL_RE.match(_strip_ending(f.name, ending))
        if not m:
            raise LdmError(f"{f} is not named CASE_0000{ending} as nnU-Net expects")
        files.setdefault(m["case"], {})[int(m["channel"])] = f
    if not files:
        raise LdmError(f"no volumes found in {images_dir}")
    images = _channel_files(files, channel_names, json_path, ending)

    labels: dict[str, Path] = {}
    if labels_dir.is_dir():
        for f in sorted(labels_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(ending.lower()):
                labels[_strip_ending(f.name, ending)] = f
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise LdmError(f"label {labels[orphans[0]]} has no image (expected imagesTr/{orphans[0]}_0000{ending})")
        unlabelled = sorted(set(images) - set(labels))
        if unlabelled:
            raise LdmError(f"case {unlabelled[0]} has no label (expected labelsTr/{unlabelled[0]}{ending})")
    masks: dict[str, Path] = {}
    masks_dir = root / "masksTr"
    if masks_dir.is_dir():  # optional: cases without a mask are complete
        for f in sorted(masks_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(ending.lower()):
                masks[_strip_ending(f.name, ending)] = f
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise LdmError(
                f"missing-voxel mask {masks[orphans[0]]} has no image (expected imagesTr/{orphans[0]}_0000{ending})"
            )
    cases = []
    for cid in sorted(images):
        present = [p for p in images[cid] if p is not None]
        absent = tuple(c for c, p in enumerate(images[cid]) if p is None)
        cases.append(
            Case(cid, present[0], labels.get(cid), masks.get(cid), more_channels=tuple(present[1:]), absent=absent)
        )
    inferred = bool(labels) and not label_names
    dims = 2 if _is_picture(cases[0].image) else 3
    return Dataset(root, cases, channel_names, label_names, layout="nnunet", labels_inferred=inferred, image_dims=dims)


def _channel_key(key: str) -> int:
    return int(key) if key.isdigit() else 1 << 30


def _channel_files(
    files: dict[str, dict[int, Path]], channel_names: dict[str, str], json_path: Path, ending: str
) -> dict[str, list[Path | None]]:
    """{case: its file of every channel in order, None for a channel it has no file of}; the
    channels are those of dataset.json's `channel_names` (or, without it, those any case has); a
    file of another channel is an LdmError naming the case."""
    expected = (
        list(range(len(channel_names)))
        if channel_names
        else sorted({c for per_case in files.values() for c in per_case})
    )

    out = {}
    for case, per_case in sorted(files.items()):
        extra = sorted(set(per_case) - set(expected))
        if extra:
            listed = f"{json_path.name} lists {len(expected)} channel{'s' * (len(expected) != 1)}"
            raise LdmError(f"case {case} has a channel {extra[0]:04d} file ({per_case[extra[0]].name}) but {listed}")
        out[case] = [per_case.get(c) for c in expected]
    unseen = [c for c in expected if all(per_case[c] is None for per_case in out.values())]
    if unseen:
        name = f" ({channel_names[str(unseen[0])]})" if str(unseen[0]) in channel_names else ""
        raise LdmError(
            f"no case has a channel {unseen[0]:04d}{name} file (imagesTr/CASE_{unseen[0]:04d}{ending}) "
            f"although {json_path.name} lists {len(expected)} channels"
        )
    return out


def _guess_ending(images_dir: Path) -> str:
    """The file ending of an nnU-Net imagesTr/ without dataset.json: .nii.gz, or that of its 2D
    images (.png, .tif, ...) when it holds those."""
    if images_dir.is_dir():
        for f in sorted(images_dir.iterdir()):
            if not f.name.startswith(".") and is_image_path(f):
                return next(e for e in IMAGE_SUFFIXES if f.name.lower().endswith(e))
    return ".nii.gz"


def _holds_dicom(folder: Path) -> bool:
    """True if any file under ``folder`` (recursively) is a DICOM file."""
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.upper() != "DICOMDIR" and is_dicom_file(Path(dirpath) / name):
                return True
    return False


def first_dicom_file(folder: Path) -> Path | None:
    """The first DICOM file directly in `folder` (not in a subfolder; DICOMDIR indexes skipped),
    or None: a folder holding one is a DICOM series (one input)."""
    for f in sorted(Path(folder).iterdir()):
        if not f.name.startswith(".") and f.is_file() and f.name.upper() != "DICOMDIR" and is_dicom_file(f):
            return f
    return None


def contrast_folders(folder: Path, minimum: int = 2) -> dict[str, Path] | None:
    """{contrast: series folder} of a case folder laid out as one DICOM series folder per contrast
    (``CASE/t1/``, ``CASE/flair/``: no DICOM file directly in CASE, at least `minimum` subfolders
    that each directly hold DICOM files, each folder its own series); None for any other folder
    (a series, possibly spread over subfolders, or anything else). With `minimum` 1 a case folder
    of one contrast's series counts too (a case that lacks the others)."""
    folder = Path(folder)
    if not folder.is_dir() or first_dicom_file(folder) is not None:
        return None
    subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    firsts = {d.name: f for d in subs if (f := first_dicom_file(d)) is not None}
    if len(firsts) < max(1, minimum):
        return None
    uids = {str(_read_header(f).get("SeriesInstanceUID", "") or "") for f in firsts.values()}
    if len(uids) != len(firsts):  # one series in several folders: not contrasts
        return None
    return {name: f.parent for name, f in firsts.items()}


def _is_picture(path: Path) -> bool:
    """True for a 2D image file: PNG/JPEG/TIFF, or a single-frame 2D DICOM picture."""
    if is_image_path(path):
        return True
    header = _read_header(path) if not is_nifti_path(path) else None
    return header is not None and is_2d_dicom_header(header)


def _pictures(folder: Path) -> list[Path]:
    """The 2D image files directly in `folder` (hidden files skipped), sorted; empty unless its first
    file is one (so a DICOM series folder costs one header read here)."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    if not files or not _is_picture(files[0]):
        return []
    return [f for f in files if _is_picture(f)]


def _load_folder(root: Path) -> Dataset:
    """A plain folder: NIfTI files and DICOM series subfolders, or one DICOM series itself; or 2D
    images, loose or in class folders."""
    cases: dict[str, Case] = {}
    direct_dicom = False
    kinds: dict[int, str] = {}  # image dims -> an example entry, to name both in the mixed-data error
    series_of: dict[str, dict[str, Path]] = {}  # case -> contrast -> series folder, for contrast folders

    def add(case: Case, dims: int, entry: Path) -> None:
        kinds.setdefault(dims, entry.name)
        if case.case_id in cases:
            raise LdmError(
                f"{root} has two volumes named {case.case_id} ({cases[case.case_id].image.name}, {entry.name})"
            )
        cases[case.case_id] = case

    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and is_nifti_path(entry):
            add(Case(_volume_id(entry.name), entry), 3, entry)
        elif entry.is_file() and _is_picture(entry):
            add(Case(_volume_id(entry.name), entry), 2, entry)
        elif entry.is_dir() and (pictures := _pictures(entry)):
            for f in pictures:  # a class folder: DATA/CLASS/IMAGE
                add(Case(f"{entry.name}_{_volume_id(f.name)}", f, group=entry.name), 2, entry / f.name)
        elif entry.is_dir() and (series := contrast_folders(entry, minimum=1)):
            series_of[entry.name] = series  # one series in a subfolder: a contrast if other cases have several
            add(Case(entry.name, entry), 3, entry)
        elif entry.is_dir() and _holds_dicom(entry):
            add(Case(entry.name, entry), 3, entry)
        else:
            direct_dicom = direct_dicom or (entry.is_file() and is_dicom_file(entry))
    known = {c for per_case in series_of.values() if len(per_case) > 1 for c in per_case}
    if known:
        contrasts = {k: v for k, v in series_of.items() if len(v) > 1 or set(v) <= known}
        return _contrast_dataset(root, cases, contrasts)
    if len(kinds) > 1:
        raise LdmError(
            f"{root} mixes 2D images ({kinds[2]}) and 3D volumes ({kinds[3]}); put them in separate data sets"
        )
    if not cases and direct_dicom:
        return Dataset(root, [Case(root.name, root)], layout="folder")
    if not cases:
        raise LdmError(f"no volumes found in {root} (NIfTI, DICOM series, or 2D PNG/JPEG/TIFF/DICOM images)")
    return Dataset(root, list(cases.values()), layout="folder", image_dims=next(iter(kinds)))


def _contrast_dataset(root: Path, cases: dict[str, Case], contrasts: dict[str, dict[str, Path]]) -> Dataset:
    """The cases of a folder of DICOM case folders with one series folder per contrast."""
    single = sorted(set(cases) - set(contrasts))
    if single:
        example = next(iter(contrasts))
        raise LdmError(
            f"{root} mixes cases of one series ({single[0]}/) with cases of one series folder per contrast "
            f"({example}/{', '.join(contrasts[example])}); give every case its contrast folders"
        )
    names = sorted({c for per_case in contrasts.values() for c in per_case})
    out = []
    for cid in sorted(contrasts):
        files = [contrasts[cid].get(n) for n in names]
        present = [f for f in files if f is not None]
        absent = tuple(c for c, f in enumerate(files) if f is None)
        out.append(Case(cid, present[0], more_channels=tuple(present[1:]), absent=absent))
    return Dataset(root, out, {str(c): n for c, n in enumerate(names)}, layout="folder")


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Find the cases under ``path`` (nnU-Net folder, plain folder or single file)."""
    p = Path(path)
    if not p.exists():
        raise LdmError(f"{p} does not exist")
    if p.is_file():
        picture = _is_picture(p)
        case_id = _volume_id(p.name) if is_nifti_path(p) or picture else p.stem
        return Dataset(p.parent, [Case(case_id, p)], layout="file", image_dims=2 if picture else 3)
    if (p / "imagesTr").is_dir():
        return _load_nnunet(p)
    return _load_folder(p)


def case_channel_files(source: Path, names: list[str], absent: int | None = None, hint: str = "") -> list[Path]:
    """The input file of every channel of a model with channels `names`: `source` for one channel;
    for several, nnU-Net's CASE_0000, CASE_0001, ... beside `source` (which is one of them). Each
    must exist but that of channel `absent` (missing altogether), else an LdmError naming the case
    and channel (`hint` appended, "{name}" the channel's name)."""
    source = Path(source)
    if len(names) == 1:
        return [source]
    series = contrast_folders(source, minimum=1)
    if series is not None and (len(series) > 1 or set(series) <= set(names)):  # one series folder per contrast
        unknown = sorted(set(series) - set(names))
        if unknown:
            raise LdmError(
                f"{source}/{unknown[0]} is not one of the model's channels ({', '.join(names)}); "
                "name each contrast's series folder after its channel"
            )
        for c, name in enumerate(names):
            if c != absent and name not in series:
                raise LdmError(
                    f"case {source.name} has no {name} series folder (expected {source / name})"
                    + hint.format(name=name)
                )
        return [series.get(name, source / name) for name in names]
    stem = _volume_id(source.name)
    m = _CHANNEL_RE.match(stem)
    if not m or not source.is_file():
        raise LdmError(
            f"{source}: the model takes {len(names)} channels ({', '.join(names)}); give one file of a case "
            "named CASE_0000.nii.gz, its other channels beside it as CASE_0001.nii.gz, ..., or a DICOM case "
            f"folder with one series folder per channel ({source.name}/{names[0]}/, {source.name}/{names[1]}/)"
        )
    ending = source.name[len(stem) :]
    files = [source.parent / f"{m['case']}_{c:04d}{ending}" for c in range(len(names))]
    for c, f in enumerate(files):
        if c != absent and not f.exists():
            raise LdmError(
                f"case {m['case']} has no channel {c:04d} ({names[c]}) file (expected {f})" + hint.format(name=names[c])
            )
    return files


def _as_label_array(label: Volume, case_id: str) -> np.ndarray:
    """Label values as an integer array; LdmError for non-integer values."""
    data = label.array
    if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        return data.astype(np.int32) if data.dtype == np.bool_ else data
    if not np.all(np.isfinite(data)) or not np.all(data == np.rint(data)):
        raise LdmError(f"label of {case_id} has non-integer values; label maps must hold integer classes")
    lo, hi = float(data.min()), float(data.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return data.astype(dtype)
    raise LdmError(f"label of {case_id} has values up to {hi:g}, too large for a label map")


def read_aligned(path: Path, image: Volume, what: str, allow_nan: bool = False) -> Volume:
    """Read a volume that belongs to `image` (a label map, a mask, another channel): same shape,
    affines equal within AFFINE_TOL, else an LdmError naming `what`."""
    vol = read_volume(path, allow_nan=allow_nan)
    if vol.shape != image.shape[:3]:  # a multi-channel image: (I, J, K, C)
        raise LdmError(f"{what} has shape {vol.shape} but its image has shape {image.shape[:3]}")
    diff = float(np.max(np.abs(vol.affine - image.affine)))
    if diff > AFFINE_TOL:
        raise LdmError(f"{what} is not aligned with its image (affines differ by up to {diff:.4g})")
    return vol


def read_case(
    case: Case, label_names: Mapping[str, int] | None = None, series_uid: str | None = None, allow_nan: bool = False
) -> tuple[Volume, Volume | None]:
    """Read a case's image and label and check they belong together.

    Checks: same shape, affines equal within 1e-3, integer label values, and (when
    ``label_names`` is given) every label value listed in it. ``series_uid`` picks one series
    where an image folder holds several DICOM series. A multi-channel case is one image of shape
    (I, J, K, C), its channels checked to share channel 0's grid. Returns (image, label or None).
    """
    image = read_volume(case.image, series_uid=series_uid, allow_nan=allow_nan)
    files = case.channel_files
    if len(files) > 1:
        if case.absent and not allow_nan:
            raise LdmError(f"case {case.case_id} has no channel {case.absent[0]:04d} file")
        nan = np.full(image.shape, np.nan, dtype=np.float32)  # a channel without a file: all missing
        arrays = [
            nan
            if p is None
            else np.asarray(
                (
                    image
                    if p == case.image
                    else read_aligned(p, image, f"channel {c:04d} of {case.case_id}", allow_nan)
                ).array,
                dtype=np.float32,
            )
            for c, p in enumerate(files)
        ]
        image = image.with_array(np.stack(arrays, axis=-1), channels=len(files))
    if case.label is None:
        return image, None
    label = read_aligned(case.label, image, f"label of {case.case_id}")
    data = _as_label_array(label, case.case_id)
    if label_names is not None:
        unknown = sorted(set(label_values(data)) - set(label_names.values()))
        if unknown:
            listed = sorted(set(label_names.values()))
            raise LdmError(
                f"label of {case.case_id} contains values [{summarise(unknown)}] not listed in the data set's "
                f"labels [{summarise(listed, 6)}]; fix dataset.json or merge values with --labels"
            )
    return image, label.with_array(data)
