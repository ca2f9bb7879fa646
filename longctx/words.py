"""Fixed vocabularies the generators draw from: part of the suite's definition (change them => bump SUITE_VERSION)."""
from __future__ import annotations

__all__ = ["NOUNS", "ADJECTIVES", "VERBS", "PLACES", "SYLLABLES", "WORDS", "VOCABULARY", "pseudo_word"]

NOUNS = tuple("""
apple anchor arrow badge basket beacon bell bicycle blanket boat bottle bracelet bridge brush bucket cabin
camera candle canoe carpet castle chair cherry chimney clock cloud compass cookie copper cottage crown
curtain daisy desk diamond dolphin door dragon drum eagle engine feather fence fiddle flag flute forest
fountain garden giraffe glove goat guitar hammer harbor helmet hill honey horse island jacket jewel kettle
kite ladder lamp lantern lemon library lizard magnet map marble meadow mirror monkey mountain needle nest
ocean orange orchard otter owl paddle palace panda parrot pebble pencil pepper piano pillow planet pocket
pond puzzle quilt rabbit radio rainbow ribbon river robot rocket saddle sail scarf shell shovel silver
spoon squirrel stable statue stone storm sugar sunflower table teapot temple tiger tower tractor trumpet
tulip tunnel turtle umbrella valley vase violin wagon wallet whale whistle window wolf zebra
""".split())
ADJECTIVES = tuple("""
ancient bright brisk calm careful cheerful clever cold crisp curious dark deep distant dusty eager early
elegant empty famous fancy fierce fragile friendly gentle giant golden graceful green happy heavy hidden
hollow honest humble icy jolly kind large lazy little lively lonely loud lucky mellow mighty modern
narrow noble odd old orange pale patient plain polite proud purple quick quiet rapid rare red rough round
rusty sharp shiny silent simple sleepy slow small smooth soft solid sparkling steady strange strong sunny
sweet swift tall tame tender thick tidy tiny tired vivid warm wild wise wooden young yellow
""".split())
VERBS = tuple("""
admires borrows builds carries catches chases cleans collects covers draws feeds finds follows guards
holds hides lifts marks moves opens paints pulls pushes repairs sells shares sorts visits watches
""".split())
PLACES = tuple("""
bakery beach canyon harbor market museum station theater village workshop courtyard greenhouse
lighthouse orchard plaza quarry riverbank square stadium warehouse
""".split())
SYLLABLES = tuple("ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu "
                  "ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu".split())

WORDS = tuple(dict.fromkeys(NOUNS + ADJECTIVES))  # real words, no repeats, in a fixed order
VOCABULARY = len(WORDS) + len(SYLLABLES) ** 3  # pseudo_word's indices


def pseudo_word(i: int) -> str:
    """The i-th word of an endless list: real words first, then made-up three-syllable words, all distinct."""
    if i < len(WORDS):
        return WORDS[i]
    n = len(SYLLABLES)
    j = i - len(WORDS)
    if j >= n ** 3:
        raise ValueError(f"pseudo_word index {i} exceeds the vocabulary ({len(WORDS) + n ** 3} words)")
    j = j * 7919 % n ** 3  # 7919 is coprime to 50**3: a fixed permutation, so neighbours look unalike
    return SYLLABLES[j // (n * n)] + SYLLABLES[(j // n) % n] + SYLLABLES[j % n]
