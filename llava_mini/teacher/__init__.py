"""Notebook 02: instruction data from a text-only teacher: prompts, the teachers (base, reading, symbolic,
reasoning, remote), parsing (responses), the record format (records), the cache, the runner and plots.
The records as Hugging Face datasets live in `llava_mini.teacher.hub`, imported on its own: `datasets` takes
about 2 s to import, which every notebook would pay."""

from llava_mini.teacher.base import (  # noqa: F401
    TeacherError, TeacherFatalError, TeacherBudgetExhausted, Teacher, last_user_message,
)
from llava_mini.teacher.cache import cache_key, ResponseCache  # noqa: F401
from llava_mini.teacher.plots import plot_generation_stats, show_generated  # noqa: F401
from llava_mini.teacher.prompts import (  # noqa: F401
    RESPONSE_TYPES, SEEDS_DIR, USES_BOXES, PROMPTS_DIR, SYSTEM_MESSAGES, BRIEF_INSTRUCTIONS,
    DETAILED_INSTRUCTIONS, SeedFormatError, load_seeds, check_type, build_messages, record_context,
    response_type_of, format_messages,
)
from llava_mini.teacher.reading import (  # noqa: F401
    COLOR_WORDS, SIZE_WORDS, SHAPE_WORDS, SIZE_RANK, SeenObject, SceneReading, size_word, parse_phrase,
    read_context,
)
from llava_mini.teacher.reasoning import write_reasoning  # noqa: F401
from llava_mini.teacher.records import (  # noqa: F401
    IMAGE_TOKEN, ROLES, STOP, RecordError, record_id, validate_record, validate_training_record, load_records,
    record_type, make_record, caption_records, naive_text,
)
from llava_mini.teacher.remote import (  # noqa: F401
    ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, teacher_from_env, OpenAITeacher, TransformersTeacher,
)
from llava_mini.teacher.responses import (  # noqa: F401
    ResponseRejected, format_qa, parse_qa_pairs, validate_response, response_to_record,
)
from llava_mini.teacher.runner import (  # noqa: F401
    EMPTY_REPLY, GenerationResult, generate_instruct_data, summarize, question_kind,
)
from llava_mini.teacher.symbolic import (  # noqa: F401
    COLOUR_STEPS, DRILL_KINDS, DRILL_WEIGHTS, RELATION_STEPS, write_conversation, write_detail, write_drill,
    drill_records, SymbolicTeacher,
)
