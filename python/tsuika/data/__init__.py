"""tsuika.data: dataset scan, captions, buckets, the bucket sampler and the batch loader."""

from tsuika.data.buckets import BucketGroups, BucketSpec, group_by_bucket, image_sizes
from tsuika.data.captions import CaptionOptions, process_caption
from tsuika.data.loader import AugmentOptions, BatchLoader
from tsuika.data.sample import draw_sample_dataset
from tsuika.data.sampler import Batch, BucketBatchSampler
from tsuika.data.scan import DatasetError, DatasetIndex, ImageItem, Subset, scan_dataset

__all__ = [
    "AugmentOptions",
    "Batch",
    "BatchLoader",
    "BucketBatchSampler",
    "BucketGroups",
    "BucketSpec",
    "CaptionOptions",
    "DatasetError",
    "DatasetIndex",
    "ImageItem",
    "Subset",
    "draw_sample_dataset",
    "group_by_bucket",
    "image_sizes",
    "process_caption",
    "scan_dataset",
]
