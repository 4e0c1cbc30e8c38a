"""The hand-written candidates of knowscope's default fact set (``knowscope/data/facts.json``).

Each :class:`Relation` is many-to-one: templates (the main prompt, paraphrases, generation prompts)
and ``object -> subjects`` candidate groups, visited in the order written. ``scripts/build_facts.py``
keeps the candidates the default model knows; the extended set adds to these
(``scripts/fact_candidates_extended.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
