"""Notebook 01: the shapes world (shapes, captions, writer), the COCO reader (coco), the symbolic view
(symbolic, relations), the real photos (photos), counts (stats), figures (plots); what to download for real
data: `python -m llava_mini.world.prepare` (not imported here, so that it runs as a module)."""

from llava_mini.world.captions import REGION_PHRASES, make_captions, region  # noqa: F401
from llava_mini.world.coco import (  # noqa: F401
    BOX_TOLERANCE, CocoFormatError, ObjectAnnotation, ImageRecord, CocoDataset, read_coco, read_split,
)
from llava_mini.world.photos import (  # noqa: F401
    ANNOTATION_DIR, CAPTIONS_FILE, INSTANCES_FILE, SOURCES, export_photos, read_photos,
)
from llava_mini.world.plots import (  # noqa: F401
    draw_boxes, show_records, plot_world_statistics, show_teacher_view, show_pixel_question,
)
from llava_mini.world.relations import MIN_OFFSET, MARGIN, RELATIONS, OPPOSITE, relation, unique_name  # noqa: F401
from llava_mini.world.shapes import (  # noqa: F401
    COLORS, SHAPES, SIZES, BACKGROUNDS, SPLITS, WORLD_VERSION, SUPERSAMPLE, WorldConfig, WorldObject, Scene,
    sample_scene, render_scene,
)
from llava_mini.world.stats import world_statistics  # noqa: F401
from llava_mini.world.symbolic import normalized_box, box_line, box_text, context_text  # noqa: F401
from llava_mini.world.writer import (  # noqa: F401
    IDS_PER_SPLIT, image_id_for, scene_with_captions, scene_for, generate_world,
)
