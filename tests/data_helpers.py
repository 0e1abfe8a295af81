"""Small synthetic files for the data-layer tests (NIfTI and PNG pairs, datalists)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flemme_core.data.synthetic import make_synthetic

AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 1.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def write_nifti_pairs(root: Path, n: int = 4, size=(24, 28, 20), affine=AFFINE, seed: int = 0) -> list[str]:
    """``root/images/case{i}.nii.gz`` and ``root/labels/case{i}.nii.gz``; returns the stems."""
    import nibabel as nib

    s = make_synthetic(3, size=size, num_train=n, num_held_out=1, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    stems = []
    for i, item in enumerate(s.train):
        nib.save(nib.Nifti1Image(item["image"][0], affine), str(root / "images" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(item["label"][0].astype(np.uint8), affine), str(root / "labels" / f"case{i}.nii.gz"))
        stems.append(f"case{i}")
    return stems


def write_datalist(root: Path, stems: list[str], n_val: int = 1) -> Path:
    entries = [{"image": f"images/{s}.nii.gz", "label": f"labels/{s}.nii.gz"} for s in stems]
    path = root / "dataset.json"
    path.write_text(json.dumps({"training": entries[n_val:], "validation": entries[:n_val]}))
    return path


def write_png_pairs(root: Path, n: int = 3, size=(40, 56), seed: int = 0) -> None:
    from PIL import Image

    s = make_synthetic(2, size=size, num_train=n, num_held_out=1, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(s.train):
        Image.fromarray((np.clip(item["image"][0], 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(item["label"][0].astype(np.uint8)).save(root / "labels" / f"c{i}.png")


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(0.8, 0.7, 2.0)) -> None:
    """A minimal MR DICOM series (one file per slice of ``volume`` (z, rows, cols), uint16) with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for z in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "synthetic", z + 1
        ds.ImagePositionPatient = [0.0, 0.0, z * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = volume[z].astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"slice{z:03d}.dcm"), enforce_file_format=True)
