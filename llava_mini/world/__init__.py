"""The shapes world and the symbolic view of an image (notebook 01)."""

from llava_mini.world.coco import (  # noqa: F401
    BOX_TOLERANCE, CocoFormatError, ObjectAnnotation, ImageRecord, CocoDataset, read_coco, read_split,
)
from llava_mini.world.photos import (  # noqa: F401
    ANNOTATION_DIR, CAPTIONS_FILE, INSTANCES_FILE, SOURCES, export_photos, read_photos,
)
from llava_mini.world.relations import MIN_OFFSET, MARGIN, RELATIONS, OPPOSITE, relation, unique_name  # noqa: F401
from llava_mini.world.shapes import (  # noqa: F401
    COLORS, SHAPES, SIZES, BACKGROUNDS, SPLITS, WORLD_VERSION, SUPERSAMPLE, WorldConfig, WorldObject, Scene,
    IDS_PER_SPLIT, image_id_for, sample_scene, render_scene, NUMBER_WORDS, relation, make_captions, region,
    REGION_PHRASES, generate_world, scene_with_captions, scene_for,
)
from llava_mini.world.stats import (  # noqa: F401
    world_statistics, plot_world_statistics, show_records, show_teacher_view, show_pixel_question,
)
from llava_mini.world.symbolic import normalized_box, box_line, context_text, draw_boxes  # noqa: F401
