"""The DreamBench protocol (Ruiz et al., "DreamBooth", CVPR 2023, §4.1): subjects, classes and prompt templates.

The dataset is github.com/google/dreambooth: `dataset/<subject>/*.jpg` (30 subjects, 4-6 photos each) and
`dataset/prompts_and_classes.txt`, which lists `subject_name,class` and two prompt lists of 25 templates,
one for objects and one for live subjects (the 9 dogs and cats, as the repository's README says), where
`{0}` is the unique token and `{1}` the class noun. Every prompt gets 4 images: 30 x 25 x 4 = 3000.

The lists below are a copy of that file (google/dreambooth, dataset/prompts_and_classes.txt, commit
e9b8c013ef2e30ab3d5d9018808513e9093e3bc4), used only when a local copy of the dataset lacks the file.
"""

PROMPTS_FILE = "prompts_and_classes.txt"
PROMPTS_PER_SUBJECT = 25
IMAGES_PER_PROMPT = 4
LIVE_CLASSES = ("dog", "cat")  # the README: "9 out of these subjects are live subjects (dogs and cats)"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

CLASSES = (
    ("backpack", "backpack"), ("backpack_dog", "backpack"), ("bear_plushie", "stuffed animal"),
    ("berry_bowl", "bowl"), ("can", "can"), ("candle", "candle"), ("cat", "cat"), ("cat2", "cat"),
    ("clock", "clock"), ("colorful_sneaker", "sneaker"), ("dog", "dog"), ("dog2", "dog"), ("dog3", "dog"),
    ("dog5", "dog"), ("dog6", "dog"), ("dog7", "dog"), ("dog8", "dog"), ("duck_toy", "toy"),
    ("fancy_boot", "boot"), ("grey_sloth_plushie", "stuffed animal"), ("monster_toy", "toy"),
    ("pink_sunglasses", "glasses"), ("poop_emoji", "toy"), ("rc_car", "toy"), ("red_cartoon", "cartoon"),
    ("robot_toy", "toy"), ("shiny_sneaker", "sneaker"), ("teapot", "teapot"), ("vase", "vase"),
    ("wolf_plushie", "stuffed animal"),
)

_SHARED_FIRST = (
    "a {0} {1} in the jungle",
    "a {0} {1} in the snow",
    "a {0} {1} on the beach",
    "a {0} {1} on a cobblestone street",
    "a {0} {1} on top of pink fabric",
    "a {0} {1} on top of a wooden floor",
    "a {0} {1} with a city in the background",
    "a {0} {1} with a mountain in the background",
    "a {0} {1} with a blue house in the background",
    "a {0} {1} on top of a purple rug in a forest",
)
_SHARED_LAST = (
    "a red {0} {1}",
    "a purple {0} {1}",
    "a shiny {0} {1}",
    "a wet {0} {1}",
    "a cube shaped {0} {1}",
)
OBJECT_PROMPTS = _SHARED_FIRST + (
    "a {0} {1} with a wheat field in the background",
    "a {0} {1} with a tree and autumn leaves in the background",
    "a {0} {1} with the Eiffel Tower in the background",
    "a {0} {1} floating on top of water",
    "a {0} {1} floating in an ocean of milk",
    "a {0} {1} on top of green grass with sunflowers around it",
    "a {0} {1} on top of a mirror",
    "a {0} {1} on top of the sidewalk in a crowded street",
    "a {0} {1} on top of a dirt road",
    "a {0} {1} on top of a white rug",
) + _SHARED_LAST
LIVE_PROMPTS = _SHARED_FIRST + (
    "a {0} {1} wearing a red hat",
    "a {0} {1} wearing a santa hat",
    "a {0} {1} wearing a rainbow scarf",
    "a {0} {1} wearing a black top hat and a monocle",
    "a {0} {1} in a chef outfit",
    "a {0} {1} in a firefighter outfit",
    "a {0} {1} in a police outfit",
    "a {0} {1} wearing pink glasses",
    "a {0} {1} wearing a yellow shirt",
    "a {0} {1} in a purple wizard outfit",
) + _SHARED_LAST
