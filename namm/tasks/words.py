"""Small fixed vocabularies for synthetic keys, people and values."""

from __future__ import annotations

import functools
import re

from namm.tasks.sources import prose_docs

ADJECTIVES = """ancient bitter brave bright calm clever cold crimson curious damp dark eager
early empty fierce fragile gentle giant golden hidden hollow humble icy idle jolly keen
lively lonely loud lucky mellow misty modest narrow noble odd pale patient plain polite
proud quiet rapid rare rough round royal rusty sharp shiny silent silver slow smooth
soft solid sour steady sticky stormy strange sturdy sweet swift tame tender tiny wild
wise wooden young""".split()

NOUNS = """anchor apple arrow badge basket beacon bell blanket bottle bridge bucket cabin
camera candle canyon castle cellar chair cloud comet compass crown crystal desert
dragon drum eagle engine falcon feather fence forest fountain garden glacier hammer
harbor helmet island jacket kettle ladder lantern lemon lighthouse magnet meadow mirror
mountain needle orchard otter oyster paddle parrot pebble pepper piano pillow planet
pocket pumpkin puzzle quarry rabbit ribbon river rocket saddle scarf shell shovel
spider stable statue stove tiger tower tractor trumpet tunnel turtle umbrella valley
violin wagon walnut whistle window wizard""".split()

FIRST_NAMES = """Adele Bruno Carmen Dmitri Elena Farid Greta Hector Ingrid Jonas Keiko Lars Mateo
Nadia Oskar Priya Quentin Rosa Stefan Tamsin Ulrich Vera Wendell Ximena Yusuf Zora Amara
Bastian Cecile Darius Esther Felix Gianna Hugo Isolde Jasper Kalani Leopold Mireille
Nikolai Odile Pavel Renata Soren Thea Umberto Valeria Willem""".split()

LAST_NAMES = """Abbott Brennan Castillo Dubois Eriksen Fontaine Gallagher Haddad Ishikawa Janssen
Kowalski Lindqvist Moreau Novak Okafor Petrov Quigley Rinaldi Sandoval Takahashi Underwood
Varga Whitfield Yilmaz Zimmermann Albrecht Bergstrom Carvalho Delacroix Esposito
Fitzgerald Gutierrez Holloway Iversen Jablonski Kaminski Laurent Mendoza Nakamura
Ostrowski Pellegrini Rasmussen Schneider Thornton Valdez Wojcik""".split()

CITIES = """Lisbon Oslo Nairobi Hanoi Quito Tbilisi Dakar Bergen Porto Krakow Seville Tallinn
Valparaiso Mombasa Osaka Adelaide Winnipeg Tangier Cusco Zanzibar Gdansk Salzburg
Bilbao Trieste Aarhus Cork Halifax Lyon Ghent Riga Vilnius Ljubljana Split Izmir
Asmara Luanda Recife Medellin Cebu Kandy""".split()

PROFESSIONS = """architect baker beekeeper botanist cartographer chemist clockmaker dentist
economist electrician engineer farmer geologist glassblower historian illustrator
jeweler journalist librarian locksmith machinist midwife navigator optician pharmacist
photographer pilot potter radiologist sculptor surveyor tailor translator veterinarian
violinist welder""".split()

INSTRUMENTS = """accordion banjo bassoon cello clarinet drums flute guitar harp harmonica
mandolin oboe piano saxophone sitar trombone trumpet tuba ukulele viola""".split()


@functools.lru_cache(maxsize=None)
def prose_vocabulary(split: str) -> tuple[str, ...]:
    """Distinct lowercase words (4 to 10 letters) of the split's prose, in a stable order."""
    seen: dict[str, None] = {}
    for doc in prose_docs(split):
        for word in re.findall(r"\b[a-z]{4,10}\b", doc.text):
            seen.setdefault(word, None)
    return tuple(seen)
