"""Who wrote it: the composers the datasets name, with full name and era.

Datasets spell composers differently (SMD writes ``Rachmaninoff``, MAESTRO
``Sergei Rachmaninoff``, the music21 corpus folder ``rachmaninoff``); the
query service's metadata affinity compares these strings, so every importer
maps a name through this one table and the same person gets the same
``composer`` / ``composer_full`` / ``era`` whichever dataset brought the track.
Spellings are ASCII and match ``mess.corpus`` where the two overlap.
"""

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Composer:
    name: str  # the short name every dataset agrees on, e.g. "Chopin"
    full: str
    era: str


_TABLE: tuple[Composer, ...] = (
    Composer("Josquin", "Josquin des Prez", "Renaissance"),
    Composer("Palestrina", "Giovanni Pierluigi da Palestrina", "Renaissance"),
    Composer("Monteverdi", "Claudio Monteverdi", "Renaissance"),
    Composer("Byrd", "William Byrd", "Renaissance"),
    Composer("Purcell", "Henry Purcell", "Baroque"),
    Composer("Corelli", "Arcangelo Corelli", "Baroque"),
    Composer("Couperin", "Francois Couperin", "Baroque"),
    Composer("Rameau", "Jean-Philippe Rameau", "Baroque"),
    Composer("Vivaldi", "Antonio Vivaldi", "Baroque"),
    Composer("Bach", "Johann Sebastian Bach", "Baroque"),
    Composer("Handel", "George Frideric Handel", "Baroque"),
    Composer("Scarlatti", "Domenico Scarlatti", "Baroque"),
    Composer("Haydn", "Joseph Haydn", "Classical"),
    Composer("Clementi", "Muzio Clementi", "Classical"),
    Composer("Mozart", "Wolfgang Amadeus Mozart", "Classical"),
    Composer("Beethoven", "Ludwig van Beethoven", "Classical"),
    Composer("Weber", "Carl Maria von Weber", "Romantic"),
    Composer("Schubert", "Franz Schubert", "Romantic"),
    Composer("Mendelssohn", "Felix Mendelssohn", "Romantic"),
    Composer("Chopin", "Frederic Chopin", "Romantic"),
    Composer("Schumann", "Robert Schumann", "Romantic"),
    Composer("Liszt", "Franz Liszt", "Romantic"),
    Composer("Verdi", "Giuseppe Verdi", "Romantic"),
    Composer("Franck", "Cesar Franck", "Romantic"),
    Composer("Brahms", "Johannes Brahms", "Romantic"),
    Composer("Mussorgsky", "Modest Mussorgsky", "Romantic"),
    Composer("Tchaikovsky", "Pyotr Ilyich Tchaikovsky", "Romantic"),
    Composer("Dvorak", "Antonin Dvorak", "Romantic"),
    Composer("Grieg", "Edvard Grieg", "Romantic"),
    Composer("Faure", "Gabriel Faure", "Romantic"),
    Composer("Albeniz", "Isaac Albeniz", "Romantic"),
    Composer("Granados", "Enrique Granados", "Romantic"),
    Composer("Rachmaninoff", "Sergei Rachmaninoff", "Romantic"),
    Composer("Scriabin", "Alexander Scriabin", "Romantic"),
    Composer("Medtner", "Nikolai Medtner", "Romantic"),
    Composer("Busoni", "Ferruccio Busoni", "Romantic"),
    Composer("Debussy", "Claude Debussy", "Modern"),
    Composer("Satie", "Erik Satie", "Modern"),
    Composer("Janacek", "Leos Janacek", "Modern"),
    Composer("Ravel", "Maurice Ravel", "Modern"),
    Composer("Bartok", "Bela Bartok", "Modern"),
    Composer("Berg", "Alban Berg", "Modern"),
    Composer("Schoenberg", "Arnold Schoenberg", "Modern"),
    Composer("Stravinsky", "Igor Stravinsky", "Modern"),
    Composer("Prokofiev", "Sergei Prokofiev", "Modern"),
    Composer("Shostakovich", "Dmitri Shostakovich", "Modern"),
    Composer("Joplin", "Scott Joplin", "Modern"),
)

# Other spellings seen in the datasets, folded like `fold` does.
_ALIASES = {
    "skryabin": "scriabin",
    "rachmaninov": "rachmaninoff",
    "schonberg": "schoenberg",
    "haendel": "handel",
    "tschaikowsky": "tchaikovsky",
    "moussorgsky": "mussorgsky",
    "prez": "josquin",
}

_BY_SURNAME = {composer.name.lower(): composer for composer in _TABLE}


def fold(text: str) -> str:
    """Lower case without accents: ``Frédéric`` and ``Frederic`` compare equal."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower().strip()


def surname(full_name: str) -> str:
    """The last word of a name, as written (``Ludwig van Beethoven`` -> ``Beethoven``)."""
    words = full_name.split()
    return words[-1] if words else full_name


def find_composer(name: str) -> Composer | None:
    """The table entry for a short or full name, however accented or cased; None if unknown."""
    folded = fold(name)
    if folded in _ALIASES:
        folded = _ALIASES[folded]
    if folded in _BY_SURNAME:
        return _BY_SURNAME[folded]
    last = fold(surname(name))
    return _BY_SURNAME.get(_ALIASES.get(last, last))
