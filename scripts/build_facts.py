"""Build (or re-check) knowscope's bundled fact set, ``knowscope/data/facts.json``.

The bundled facts are CounterFact-format records of facts that the DEFAULT model
(SmolLM2-135M-Instruct) actually knows: a fact is kept only when the model's greedy next token
after the filled prompt (BOS prepended, :func:`knowscope.knowledge.fact_accuracy`'s convention)
is the first token of ``" " + target_true``. Tracing and editing need facts the model knows:
a trace of a fact the model gets wrong localises nothing, and an edit's efficacy is only
meaningful against a real prior belief.

The candidates below (relations, subjects, objects, templates) are hand-written. All relations
are many-to-one, so every fact has neighbourhood prompts: the same relation asked about OTHER
subjects with the same true object (CounterFact's specificity test). Neighbourhood prompts the
model answers correctly are preferred, so that an edit's neighbourhood score measures real
damage rather than noise on prompts the model never knew.

Usage::

    python scripts/build_facts.py                 # build knowscope/data/facts.json
    python scripts/build_facts.py --out my.json   # build elsewhere
    python scripts/build_facts.py --check         # re-verify the bundled file; exit 1 if a fact is not known

The build is deterministic: candidates are visited in the order written here, the
counterfactual object is chosen by a fixed rule, and the model runs in eval mode without
sampling.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "knowscope" / "data" / "facts.json"

MAX_NEIGHBORS = 10  # CounterFact stores 10 neighbourhood prompts per record
MIN_NEIGHBORS = 5
MIN_PARAPHRASES = 2
MAX_FACTS_PER_RELATION = 40

log = logging.getLogger("build_facts")


@dataclass
class Relation:
    """One many-to-one relation: templates plus ``object -> subjects`` candidate groups."""

    relation_id: str
    template: str
    paraphrases: list[str]
    generation: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)


RELATIONS: list[Relation] = [
    Relation(
        "P37",  # official language of a country
        "The official language of {} is",
        ["In {}, the official language is", "The official language in {} is", "People in {} speak"],
        ["In {}, most people speak", "The newspapers of {} are written in"],
        {
            "Spanish": ["Mexico", "Argentina", "Peru", "Colombia", "Chile", "Spain", "Venezuela", "Cuba", "Bolivia",
                        "Ecuador", "Uruguay", "Paraguay", "Guatemala", "Honduras", "Nicaragua", "Costa Rica",
                        "Panama", "El Salvador", "the Dominican Republic"],
            "Portuguese": ["Brazil", "Portugal", "Angola", "Mozambique", "Cape Verde", "Guinea-Bissau",
                           "São Tomé and Príncipe"],
            "French": ["France", "Senegal", "Ivory Coast", "Mali", "Niger", "Burkina Faso", "Monaco", "Gabon",
                       "Benin", "Togo", "Guinea", "the Republic of the Congo"],
            "Arabic": ["Egypt", "Saudi Arabia", "Jordan", "Iraq", "Syria", "Lebanon", "Libya", "Yemen", "Oman",
                       "Kuwait", "Qatar", "Bahrain", "Algeria", "Morocco", "Tunisia", "Sudan",
                       "the United Arab Emirates"],
            "English": ["Australia", "New Zealand", "the United Kingdom", "the United States", "Jamaica", "Nigeria",
                        "Ghana", "Liberia", "the Bahamas", "Barbados"],
            "German": ["Germany", "Austria", "Liechtenstein", "the German Democratic Republic", "Prussia",
                       "Bavaria"],
            "Russian": ["Russia", "the Soviet Union", "Belarus", "the Russian Empire", "Siberia", "Chechnya"],
        },
    ),
    Relation(
        "P17",  # country a city is in
        "{} is a city in the country of",
        ["{} is located in the country of", "{} is a large city in the country of",
         "The city of {} is located in the country of"],
        ["The streets of {} are", "Tourists who visit {} often"],
        {
            "Japan": ["Tokyo", "Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo", "Kobe", "Hiroshima", "Fukuoka",
                      "Nagasaki", "Sendai"],
            "France": ["Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Bordeaux", "Strasbourg", "Lille",
                       "Nantes", "Montpellier"],
            "Germany": ["Berlin", "Munich", "Hamburg", "Frankfurt", "Cologne", "Stuttgart", "Dresden", "Leipzig",
                        "Düsseldorf", "Bremen", "Hanover"],
            "Italy": ["Rome", "Milan", "Naples", "Florence", "Venice", "Turin", "Bologna", "Palermo", "Genoa",
                      "Verona", "Pisa"],
            "Spain": ["Madrid", "Barcelona", "Seville", "Valencia", "Bilbao", "Málaga", "Granada", "Zaragoza",
                      "Toledo", "Salamanca"],
            "China": ["Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Wuhan", "Chengdu", "Nanjing", "Hangzhou",
                      "Xi'an", "Tianjin"],
            "India": ["Mumbai", "Delhi", "Bangalore", "Kolkata", "Chennai", "Hyderabad", "Pune", "Jaipur",
                      "Ahmedabad", "Lucknow"],
            "Russia": ["Moscow", "Saint Petersburg", "Novosibirsk", "Kazan", "Yekaterinburg", "Vladivostok",
                       "Samara", "Omsk"],
            "Canada": ["Toronto", "Montreal", "Vancouver", "Calgary", "Ottawa", "Edmonton", "Winnipeg", "Halifax"],
            "Australia": ["Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "Canberra", "Hobart", "Darwin"],
            "Brazil": ["São Paulo", "Rio de Janeiro", "Brasília", "Salvador", "Recife", "Fortaleza", "Manaus",
                       "Porto Alegre"],
            "Turkey": ["Istanbul", "Ankara", "Izmir", "Antalya", "Bursa", "Konya", "Trabzon"],
            "Egypt": ["Cairo", "Alexandria", "Luxor", "Giza", "Aswan", "Port Said"],
        },
    ),
    Relation(
        "P276",  # city a landmark is located in
        "{} can be found in the city of",
        ["{} is located in the city of", "{} stands in the city of", "{} is a landmark in the city of"],
        ["Every year, visitors to {}", "The history of {} began"],
        {
            "Paris": ["The Eiffel Tower", "The Louvre", "The Arc de Triomphe", "Notre-Dame Cathedral",
                      "The Champs-Élysées", "The Sacré-Cœur Basilica", "The Musée d'Orsay", "The Place de la Concorde",
                      "The Pompidou Centre"],
            "London": ["Big Ben", "Buckingham Palace", "Westminster Abbey", "Trafalgar Square", "The British Museum",
                       "Tower Bridge", "Piccadilly Circus", "Hyde Park", "St Paul's Cathedral"],
            "Rome": ["The Colosseum", "The Trevi Fountain", "The Pantheon", "The Roman Forum", "The Spanish Steps",
                     "The Circus Maximus", "The Baths of Caracalla", "Castel Sant'Angelo"],
            "New York": ["The Statue of Liberty", "The Empire State Building", "Central Park", "Times Square",
                         "The Brooklyn Bridge", "Wall Street", "Rockefeller Center", "The Chrysler Building",
                         "The Metropolitan Museum of Art"],
            "Moscow": ["Red Square", "The Kremlin", "Saint Basil's Cathedral", "The Bolshoi Theatre",
                       "Lenin's Mausoleum", "Gorky Park"],
            "Beijing": ["The Forbidden City", "Tiananmen Square", "The Temple of Heaven", "The Summer Palace",
                        "The Great Hall of the People", "The Bird's Nest stadium"],
            "Barcelona": ["The Sagrada Familia", "Park Güell", "Camp Nou", "La Rambla", "Casa Batlló", "Casa Milà"],
            "Berlin": ["The Brandenburg Gate", "The Reichstag building", "Checkpoint Charlie", "Alexanderplatz",
                       "Museum Island", "The Kurfürstendamm"],
            "Athens": ["The Acropolis", "The Parthenon", "The Erechtheion", "The Temple of Olympian Zeus",
                       "The Panathenaic Stadium", "The Ancient Agora"],
            "Istanbul": ["Hagia Sophia", "The Blue Mosque", "Topkapi Palace", "The Grand Bazaar", "Galata Tower",
                         "The Basilica Cistern"],
            "Venice": ["St Mark's Basilica", "The Rialto Bridge", "The Doge's Palace", "The Grand Canal",
                       "The Bridge of Sighs", "St Mark's Square"],
            "San Francisco": ["The Golden Gate Bridge", "Alcatraz Island", "Fisherman's Wharf", "Lombard Street",
                              "Coit Tower", "Chinatown's Dragon Gate"],
        },
    ),
    Relation(
        "P641",  # sport an athlete plays
        "{} is a professional",
        ["{} is a famous professional", "{} is known as a professional", "{} plays the sport of"],
        ["{} is best known for", "When {} was young, he"],
        {
            "soccer": ["Lionel Messi", "Cristiano Ronaldo", "Neymar", "Kylian Mbappé", "Zinedine Zidane", "Pelé",
                       "Diego Maradona", "David Beckham", "Wayne Rooney", "Thierry Henry", "Ronaldinho",
                       "Zlatan Ibrahimović", "Mohamed Salah", "Robert Lewandowski", "Luka Modrić",
                       "Andrés Iniesta", "Erling Haaland", "Harry Kane"],
            "basketball": ["Michael Jordan", "LeBron James", "Kobe Bryant", "Stephen Curry", "Kevin Durant",
                           "Shaquille O'Neal", "Magic Johnson", "Larry Bird", "Kareem Abdul-Jabbar",
                           "Dirk Nowitzki", "Tim Duncan", "Giannis Antetokounmpo", "Yao Ming"],
            "baseball": ["Babe Ruth", "Derek Jeter", "Mickey Mantle", "Hank Aaron", "Barry Bonds", "Ichiro Suzuki",
                         "Shohei Ohtani", "Alex Rodriguez", "Jackie Robinson", "Willie Mays", "Lou Gehrig",
                         "Ty Cobb"],
            "tennis": ["Roger Federer", "Rafael Nadal", "Novak Djokovic", "Serena Williams", "Venus Williams",
                       "Andy Murray", "Maria Sharapova", "Pete Sampras", "Andre Agassi", "Steffi Graf",
                       "Björn Borg", "John McEnroe"],
            "golf": ["Tiger Woods", "Jack Nicklaus", "Arnold Palmer", "Phil Mickelson", "Rory McIlroy",
                     "Gary Player", "Seve Ballesteros", "Jordan Spieth"],
            "hockey": ["Wayne Gretzky", "Sidney Crosby", "Alexander Ovechkin", "Mario Lemieux", "Bobby Orr",
                       "Gordie Howe", "Connor McDavid", "Jaromír Jágr"],
            "cricket": ["Sachin Tendulkar", "Virat Kohli", "Don Bradman", "Brian Lara", "Shane Warne", "MS Dhoni",
                        "Ricky Ponting", "Jacques Kallis"],
        },
    ),
    Relation(
        "P103",  # native language of a person
        "The native language of {} is",
        ["{} grew up speaking", "The first language of {} is", "The native tongue of {} is"],
        ["{} was born in", "Where {} grew up, people"],
        {
            "French": ["Victor Hugo", "Jean-Paul Sartre", "Voltaire", "Molière", "Albert Camus", "Emmanuel Macron",
                       "Charles de Gaulle", "Claude Monet", "Édith Piaf", "Jacques Chirac", "Gustave Flaubert",
                       "Marcel Proust"],
            "German": ["Angela Merkel", "Johann Wolfgang von Goethe", "Friedrich Nietzsche", "Immanuel Kant",
                       "Karl Marx", "Martin Luther", "Thomas Mann", "Franz Kafka", "Otto von Bismarck",
                       "Friedrich Schiller", "Helmut Kohl"],
            "Russian": ["Vladimir Putin", "Leo Tolstoy", "Fyodor Dostoevsky", "Anton Chekhov", "Alexander Pushkin",
                        "Mikhail Gorbachev", "Boris Yeltsin", "Ivan Turgenev", "Vladimir Lenin"],
            "Spanish": ["Miguel de Cervantes", "Gabriel García Márquez", "Jorge Luis Borges", "Pablo Neruda",
                        "Federico García Lorca", "Mario Vargas Llosa", "Octavio Paz", "Isabel Allende"],
            "Italian": ["Dante Alighieri", "Leonardo da Vinci", "Galileo Galilei", "Umberto Eco",
                        "Silvio Berlusconi", "Giuseppe Verdi", "Niccolò Machiavelli", "Giovanni Boccaccio"],
            "Japanese": ["Haruki Murakami", "Hayao Miyazaki", "Akira Kurosawa", "Yukio Mishima", "Shinzo Abe",
                         "Yoko Ono", "Hirohito"],
            "Dutch": ["Vincent van Gogh", "Rembrandt", "Johannes Vermeer", "Anne Frank", "Erasmus", "Piet Mondrian"],
        },
    ),
    Relation(
        "P495",  # country a company or brand comes from
        "{} is a company from the country of",
        ["{} is a company based in the country of", "{} was founded in the country of",
         "{} is headquartered in the country of"],
        ["The products of {} are", "{} announced today that"],
        {
            "Japan": ["Toyota", "Honda", "Nissan", "Mazda", "Subaru", "Mitsubishi", "Suzuki", "Sony", "Nintendo",
                      "Panasonic", "Toshiba", "Canon", "Nikon", "Yamaha", "Fujifilm"],
            "Germany": ["BMW", "Mercedes-Benz", "Volkswagen", "Audi", "Porsche", "Siemens", "Adidas", "Bosch", "SAP",
                        "Bayer", "Lufthansa", "Puma", "BASF"],
            "Italy": ["Ferrari", "Fiat", "Lamborghini", "Maserati", "Alfa Romeo", "Gucci", "Prada", "Ducati",
                      "Pirelli", "Benetton"],
            "France": ["Renault", "Peugeot", "Citroën", "Michelin", "Chanel", "L'Oréal", "Louis Vuitton", "Danone",
                       "Total", "Carrefour"],
            "Sweden": ["Volvo", "IKEA", "Ericsson", "Saab", "Spotify", "H&M", "Electrolux", "Scania"],
            "Finland": ["Nokia", "Rovio", "Kone", "Marimekko", "Fiskars", "Supercell"],
        },
    ),
    Relation(
        "P176",  # company that makes or develops a product
        "{} was developed by",
        ["{} was created by", "{} was designed by", "The company behind {} is"],
        ["{} is popular because", "The first version of {}"],
        {
            "Apple": ["The iPhone", "The iPad", "The MacBook", "The iPod", "The iMac", "Safari", "macOS", "iTunes",
                      "Siri", "iOS", "AirPods"],
            "Microsoft": ["Windows", "The Xbox", "Internet Explorer", "Bing", "Outlook", "PowerPoint", "Excel",
                          "Skype", "Visual Studio", "Word"],
            "Google": ["Android", "Gmail", "Chrome OS", "The Pixel phone", "Google Maps", "TensorFlow", "Chromium",
                       "AdSense"],
            "Sony": ["The PlayStation", "The Walkman", "The Xperia phone", "The Bravia television", "The PSP",
                     "The Cyber-shot camera"],
            "Nintendo": ["The Game Boy", "The Wii", "The Nintendo DS", "The GameCube", "The Super NES",
                         "The Nintendo 64", "The Switch console"],
            "Boeing": ["The 747", "The 737", "The Dreamliner", "The B-52 bomber", "The 777", "The 767"],
        },
    ),
    Relation(
        "P30",  # continent a country is on
        "{} is a country on the continent of",
        ["{} is located on the continent of", "{} is a nation on the continent of", "{} is part of the continent of"],
        ["The climate of {} is", "The history of {} is"],
        {
            "Europe": ["France", "Germany", "Italy", "Spain", "Poland", "Portugal", "Sweden", "Norway", "Austria",
                       "Belgium", "Greece", "Hungary", "Denmark", "Finland", "the Netherlands", "Switzerland"],
            "Asia": ["China", "Japan", "India", "Thailand", "Vietnam", "Indonesia", "Mongolia", "Nepal", "Cambodia",
                     "Laos", "Malaysia", "the Philippines", "South Korea", "Bangladesh", "Pakistan"],
            "Africa": ["Nigeria", "Kenya", "Egypt", "Ethiopia", "Ghana", "Morocco", "Senegal", "Tanzania", "Uganda",
                       "Zimbabwe", "Cameroon", "Mali", "Somalia", "Algeria", "Zambia", "Botswana"],
            "South America": ["Brazil", "Argentina", "Peru", "Colombia", "Chile", "Venezuela", "Bolivia", "Ecuador",
                              "Uruguay", "Paraguay"],
        },
    ),
    Relation(
        "P106",  # occupation of a person
        "{} worked as a",
        ["{} is famous as a", "{} is known as a", "By profession, {} was a"],
        ["{} is remembered for", "In his youth, {}"],
        {
            "composer": ["Wolfgang Amadeus Mozart", "Ludwig van Beethoven", "Johann Sebastian Bach",
                         "Frédéric Chopin", "Pyotr Ilyich Tchaikovsky", "Antonio Vivaldi", "Johannes Brahms",
                         "George Frideric Handel", "Joseph Haydn", "Franz Schubert", "Richard Wagner",
                         "Claude Debussy"],
            "painter": ["Pablo Picasso", "Claude Monet", "Rembrandt", "Salvador Dalí", "Paul Cézanne",
                        "Edgar Degas", "Henri Matisse", "Pierre-Auguste Renoir", "Paul Gauguin", "Édouard Manet",
                        "Caravaggio", "Titian"],
            "physicist": ["Albert Einstein", "Isaac Newton", "Niels Bohr", "Max Planck", "Richard Feynman",
                          "Stephen Hawking", "Werner Heisenberg", "Erwin Schrödinger", "Enrico Fermi",
                          "Paul Dirac", "James Clerk Maxwell"],
            "actor": ["Tom Hanks", "Brad Pitt", "Leonardo DiCaprio", "Tom Cruise", "Robert De Niro", "Al Pacino",
                      "Morgan Freeman", "Johnny Depp", "Denzel Washington", "Marlon Brando", "Jack Nicholson"],
            "poet": ["William Wordsworth", "John Keats", "Percy Bysshe Shelley", "Lord Byron", "Emily Dickinson",
                     "Walt Whitman", "Robert Frost", "Sylvia Plath", "T. S. Eliot"],
        },
    ),
]


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The model's greedy answer to one prompt, and whether it is the first token of the target."""

    predicted: str
    correct: bool
    margin: float  # logit of the target's first token minus the best other logit (> 0 iff correct)


def score_prompts(model, prompts: dict[str, str], batch_size: int = 64) -> dict[str, Verdict]:
    """Greedy next token for each ``prompt -> target`` (BOS prepended, as knowscope scores facts).

    Prompts are sorted by token length so that batches hold little padding; the verdict of each
    prompt does not depend on its batch (causal attention, right padding).
    """
    import torch

    order = sorted(prompts, key=lambda p: (len(model.tokenizer.encode(p, add_special_tokens=False)), p))
    out: dict[str, Verdict] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = model.last_logits(chunk, batch_size=batch_size)
        for prompt, row in zip(chunk, logits, strict=True):
            target_id = model.encode_target(" " + prompts[prompt])[0]
            top = int(row.argmax())
            others = row.clone()
            others[target_id] = -torch.inf
            out[prompt] = Verdict(
                predicted=model.tokenizer.decode([top]),
                correct=top == target_id,
                margin=float(row[target_id] - others.max()),
            )
        log.info("scored %d/%d prompts", min(start + batch_size, len(order)), len(order))
    return out


# --- building ---------------------------------------------------------------------------------------


def _mentions(text: str, target: str) -> bool:
    return target.lower() in text.lower()


def candidate_prompts(relations: list[Relation]) -> dict[str, str]:
    """The main-template prompt of every candidate subject -> its true object (what selection needs)."""
    prompts: dict[str, str] = {}
    for rel in relations:
        for obj, subjects in rel.groups.items():
            for subject in subjects:
                prompts[rel.template.format(subject)] = obj
    return prompts


def _first_token(model, target: str) -> int:
    return model.encode_target(" " + target)[0]


def _counterfactual(model, rel: Relation, obj: str, index: int) -> str:
    """A deterministic counterfactual object: another object of the relation, cycling with ``index``,
    whose first token differs from the true object's first token (so the edit target is unambiguous)."""
    others = [o for o in rel.groups if o != obj and _first_token(model, o) != _first_token(model, obj)]
    if not others:
        raise ValueError(f"relation {rel.relation_id}: no counterfactual object for {obj!r}")
    return others[index % len(others)]


def select_facts(model, relations: list[Relation], verdicts: dict[str, Verdict], min_margin: float) -> list:
    """The facts the model knows, with paraphrases and (preferably correctly answered) neighbourhood prompts.

    Per relation, known facts are taken round-robin over the objects (so no object dominates), up to
    ``MAX_FACTS_PER_RELATION``. A fact is kept when its prompt's greedy token is the target's first
    token with a logit margin of at least ``min_margin`` (so the verdict does not flip with batching
    or device), the target does not occur in any of its prompts, and at least ``MIN_NEIGHBORS``
    other subjects share its object.
    """
    from knowscope.facts import Fact

    facts: list[Fact] = []
    for rel in relations:
        per_object: dict[str, list[Fact]] = {}
        for obj, subjects in rel.groups.items():
            kept: list[Fact] = []
            for index, subject in enumerate(subjects):
                text = rel.template.format(subject)
                verdict = verdicts[text]
                paraphrases = [t.format(subject) for t in rel.paraphrases]
                if not verdict.correct or verdict.margin < min_margin:
                    continue
                if any(_mentions(p, obj) for p in [text, *paraphrases]):
                    continue
                neighbours = [
                    rel.template.format(s) for s in subjects
                    if s != subject and not _mentions(rel.template.format(s), obj) and subject not in s
                ]
                # neighbours the model answers correctly first (stable: candidate order within each part)
                neighbours.sort(key=lambda p: not verdicts[p].correct)
                if len(neighbours) < MIN_NEIGHBORS:
                    continue
                kept.append(
                    Fact(
                        subject=subject,
                        prompt=rel.template,
                        target_true=obj,
                        target_new=_counterfactual(model, rel, obj, index),
                        relation_id=rel.relation_id,
                        paraphrase_prompts=paraphrases,
                        neighborhood_prompts=neighbours[:MAX_NEIGHBORS],
                        generation_prompts=[t.format(subject) for t in rel.generation],
                    )
                )
            per_object[obj] = kept
        chosen: list[Fact] = []
        while len(chosen) < MAX_FACTS_PER_RELATION and any(per_object.values()):
            for obj in rel.groups:
                if per_object[obj] and len(chosen) < MAX_FACTS_PER_RELATION:
                    chosen.append(per_object[obj].pop(0))
        chosen.sort(key=lambda f: (list(rel.groups).index(f.target_true), rel.groups[f.target_true].index(f.subject)))
        facts.extend(chosen)
    for case_id, fact in enumerate(facts):
        fact.case_id = case_id
    return facts


def summarize(model, facts: list, verdicts: dict[str, Verdict] | None = None) -> dict:
    """Counts and the model's accuracy on the facts' prompts, paraphrases and neighbourhood prompts."""
    verdicts = dict(verdicts or {})
    missing: dict[str, str] = {}
    for f in facts:
        for p in [f.text, *f.paraphrase_prompts, *f.neighborhood_prompts]:
            if p not in verdicts:
                missing[p] = f.target_true
    verdicts.update(score_prompts(model, missing) if missing else {})
    para = [verdicts[p].correct for f in facts for p in f.paraphrase_prompts]
    neigh = [verdicts[p].correct for f in facts for p in f.neighborhood_prompts]
    lengths = Counter(len(model.encode_target(" " + f.subject)) for f in facts)
    return {
        "n_facts": len(facts),
        "relations": dict(Counter(f.relation_id for f in facts)),
        "objects": len({(f.relation_id, f.target_true) for f in facts}),
        "top1": sum(verdicts[f.text].correct for f in facts) / max(len(facts), 1),
        "paraphrase_accuracy": sum(para) / max(len(para), 1),
        "n_paraphrases": len(para),
        "neighborhood_accuracy": sum(neigh) / max(len(neigh), 1),
        "n_neighborhood": len(neigh),
        "subject_token_lengths": dict(sorted(lengths.items())),
    }


def build(out: Path, min_margin: float) -> int:
    from knowscope.facts import save_facts
    from knowscope.knowledge import fact_accuracy
    from knowscope.models import load_model

    model = load_model(device="cpu")
    verdicts = score_prompts(model, candidate_prompts(RELATIONS))
    facts = select_facts(model, RELATIONS, verdicts, min_margin)
    # Re-check with exactly the function the integration test and --check use.
    report = fact_accuracy(model, facts)
    wrong = [r["case_id"] for r in report.rows if not r["correct"]]
    if wrong:
        log.warning("dropping %d facts that fact_accuracy scores wrong: %s", len(wrong), wrong)
        facts = [f for f in facts if f.case_id not in set(wrong)]
        for case_id, fact in enumerate(facts):
            fact.case_id = case_id
    save_facts(facts, out)
    stats = summarize(model, facts, verdicts)
    print(json.dumps(stats, indent=1))
    print(f"wrote {len(facts)} facts to {out}")
    return 0


def check(path: Path) -> int:
    from knowscope.facts import load_facts
    from knowscope.knowledge import fact_accuracy
    from knowscope.models import load_model

    facts = load_facts(path)
    model = load_model(device="cpu")
    report = fact_accuracy(model, facts)
    wrong = [r for r in report.rows if not r["correct"]]
    print(json.dumps(summarize(model, facts), indent=1))
    for r in wrong:
        print(f"NOT KNOWN: case {r['case_id']}: {r['prompt']!r} -> {r['predicted']!r}, expected {r['target_true']!r}")
    print(f"top-1 accuracy {report.accuracy:.3f} on {len(facts)} facts from {path}")
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write (with --check: the file to check)")
    parser.add_argument("--check", action="store_true",
                        help="re-verify an existing file; exit 1 if any fact is not known")
    parser.add_argument("--min-margin", type=float, default=0.1,
                        help="keep a fact only if its target's logit beats the runner-up by this much")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.min_margin < 0:
        raise SystemExit(f"--min-margin must be >= 0, got {args.min_margin}")
    if args.check:
        if not args.out.is_file():
            raise SystemExit(f"no fact file at {args.out}")
        return check(args.out)
    return build(args.out, args.min_margin)


if __name__ == "__main__":
    sys.exit(main())
