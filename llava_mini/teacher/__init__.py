"""Instruction data from a text-only teacher (notebook 02)."""

from llava_mini.teacher.instruct import (  # noqa: F401
    STOP, ResponseRejected, parse_qa_pairs, validate_response, make_record, response_to_record, check_record,
    read_records, record_type, caption_records, naive_text, ResponseCache, cache_key, GenerationResult,
    generate_instruct_data, summarize, question_kind, plot_generation_stats, show_generated,
)
from llava_mini.teacher.prompts import (  # noqa: F401
    RESPONSE_TYPES, SEEDS_DIR, USES_BOXES, SYSTEM_MESSAGES, BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS,
    SeedFormatError, load_seeds, build_messages, record_context, response_type_of, prompt_fingerprint,
    format_messages,
)
from llava_mini.teacher.records import (  # noqa: F401
    IMAGE_TOKEN, ROLES, RecordError, record_id, validate_record, load_records,
)
from llava_mini.teacher.teachers import (  # noqa: F401
    TeacherError, TeacherFatalError, TeacherBudgetExhausted, Teacher, COLOR_WORDS, SIZE_WORDS, SHAPE_WORDS,
    COMMON_COLORS, COMMON_SHAPES, NUMBER_WORDS, SIZE_RANK, plural, number_word, SeenObject, SceneReading,
    parse_phrase, read_context, format_qa, SymbolicTeacher, ENV_API_KEY, ENV_BASE_URL, ENV_MODEL,
    teacher_from_env, OpenAITeacher, TransformersTeacher,
)
