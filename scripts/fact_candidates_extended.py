"""The candidates of knowscope's extended fact set (``knowscope/data/facts_extended.json``).

The default set's relations (``scripts/fact_candidates.py``) with the extra subjects of EXTRA_GROUPS,
plus the relations of EXTENDED_RELATIONS; :func:`relations_for` gives either set's relations.
"""

from __future__ import annotations

from collections import Counter

from fact_candidates import RELATIONS, Relation

FACT_SETS = ("default", "extended", "extra")

# --- the extended set -------------------------------------------------------------------------------
#
# ``--set extended`` builds a larger set (knowscope/data/facts_extended.json) for sequential-editing
# benchmarks: the relations above with the extra subjects of EXTRA_GROUPS appended to their candidate
# lists, plus the relations of EXTENDED_RELATIONS, with a higher per-relation cap. The default set never
# reads anything below, so it cannot change. In the extended set every subject is unique, and no prompt
# of a fact names (as a whole word or phrase, ignoring case) the subject of a fact of another relation;
# relations are served in order, so a conflict costs the later relation its candidate (see select_facts).
# Sequential-editing evaluation drops the neighbourhood prompts that name an edited subject, so such
# prompts would be lost anyway, and two facts about one subject would interfere when both are edited.
#
# Relation ids are Wikidata property ids; where one property serves two relations of the set, the second
# gets a suffix naming its kind of subject (``P17-landmark``), so that per-relation grouping keeps them apart.

MAX_FACTS_PER_RELATION_EXTENDED = 80

EXTRA_GROUPS: dict[str, dict[str, list[str]]] = {
    "P17": {
        "Mexico": ["Monterrey", "Puebla", "Tijuana", "Cancún", "Acapulco", "Ciudad Juárez",
                   "Mazatlán"],
        "Poland": ["Warsaw", "Kraków", "Gdańsk", "Wrocław", "Poznań", "Łódź", "Lublin"],
        "Pakistan": ["Karachi", "Lahore", "Islamabad", "Peshawar", "Rawalpindi", "Faisalabad", "Quetta"],
        "Iran": ["Tehran", "Isfahan", "Shiraz", "Tabriz", "Mashhad", "Qom"],
        "Indonesia": ["Jakarta", "Surabaya", "Bandung", "Medan", "Yogyakarta", "Denpasar"],
        "Vietnam": ["Hanoi", "Ho Chi Minh City", "Da Nang", "Haiphong", "Hue", "Nha Trang"],
        "Thailand": ["Bangkok", "Chiang Mai", "Phuket", "Pattaya", "Ayutthaya", "Hat Yai"],
        "South Korea": ["Seoul", "Busan", "Incheon", "Daegu", "Gwangju", "Daejeon"],
        "Portugal": ["Lisbon", "Coimbra", "Faro", "Funchal", "Aveiro", "Évora"],
        "Greece": ["Thessaloniki", "Patras", "Heraklion", "Larissa", "Volos", "Ioannina"],
        "Morocco": ["Casablanca", "Marrakesh", "Fez", "Rabat", "Tangier", "Agadir"],
        "Nigeria": ["Lagos", "Abuja", "Kano", "Ibadan", "Port Harcourt", "Enugu"],
        "South Africa": ["Johannesburg", "Cape Town", "Durban", "Pretoria", "Port Elizabeth", "Bloemfontein"],
        "Sweden": ["Stockholm", "Gothenburg", "Malmö", "Uppsala", "Västerås", "Örebro"],
        "Switzerland": ["Zurich", "Geneva", "Bern", "Basel", "Lausanne", "Lucerne"],
        "Austria": ["Vienna", "Salzburg", "Graz", "Innsbruck", "Linz", "Klagenfurt"],
        "Argentina": ["Buenos Aires", "Mendoza", "Mar del Plata", "La Plata", "Bariloche", "Salta"],
        "Colombia": ["Bogotá", "Medellín", "Cali", "Barranquilla", "Bucaramanga", "Santa Marta"],
        "Ireland": ["Dublin", "Cork", "Galway", "Limerick", "Waterford", "Kilkenny"],
        "Scotland": ["Edinburgh", "Glasgow", "Aberdeen", "Dundee", "Inverness", "Stirling"],
        "England": ["Bristol", "Sheffield", "Oxford", "Brighton", "Coventry", "Norwich", "Exeter"],
    },
    "P276": {
        "Paris": ["The Opéra Garnier", "The Moulin Rouge", "Montmartre", "The Tuileries Garden", "Les Invalides",
                  "The Conciergerie", "The Sainte-Chapelle", "The Latin Quarter", "The Père Lachaise Cemetery"],
        "London": ["The Shard", "Kensington Palace", "The Tate Modern", "Covent Garden", "Abbey Road"],
        "Rome": ["The Capitoline Hill", "The Palatine Hill", "Piazza Navona", "The Villa Borghese", "Trastevere",
                 "The Quirinal Palace"],
        "New York": ["The Flatiron Building", "One World Trade Center", "Madison Square Garden", "Carnegie Hall",
                     "The High Line", "Grand Central Terminal", "The Museum of Modern Art", "Broadway",
                     "The United Nations Headquarters", "Fifth Avenue", "Yankee Stadium"],
        "Barcelona": ["The Gothic Quarter", "Montjuïc", "The Palau de la Música Catalana", "Tibidabo"],
        "Berlin": ["The Pergamon Museum", "Potsdamer Platz", "The East Side Gallery", "Unter den Linden"],
        "Athens": ["The Plaka", "Syntagma Square", "Mount Lycabettus", "The Odeon of Herodes Atticus"],
        "Istanbul": ["The Dolmabahçe Palace", "The Süleymaniye Mosque", "Taksim Square",
                     "The Hippodrome of Constantinople", "The Spice Bazaar", "The Maiden's Tower"],
        "Venice": ["The Gallerie dell'Accademia", "The Peggy Guggenheim Collection", "La Fenice", "The Ca' d'Oro"],
        "San Francisco": ["The Transamerica Pyramid", "The Painted Ladies", "Haight-Ashbury", "The Presidio"],
        "Washington": ["The White House", "The Lincoln Memorial",
                       "The Smithsonian Institution", "The Jefferson Memorial", "The National Mall",
                       "The Library of Congress"],
        "Los Angeles": ["The Hollywood Sign", "The Getty Center", "Griffith Observatory", "Rodeo Drive",
                        "Dodger Stadium", "The Hollywood Walk of Fame", "The Staples Center"],
        "Amsterdam": ["The Rijksmuseum", "The Van Gogh Museum", "Dam Square", "Vondelpark", "The Stedelijk Museum",
                      "The Westerkerk", "The Concertgebouw"],
    },
    "P641": {
        "soccer": ["Johan Cruyff", "Franz Beckenbauer", "Eusébio", "Ferenc Puskás", "Gianluigi Buffon",
                   "Paolo Maldini", "Xavi", "Kaká", "Didier Drogba", "Steven Gerrard", "Frank Lampard", "Gareth Bale",
                   "Karim Benzema", "Sergio Ramos", "Manuel Neuer", "Antoine Griezmann", "Kevin De Bruyne",
                   "Samuel Eto'o", "George Best", "Bobby Charlton", "Marco van Basten", "Alessandro Del Piero",
                   "Francesco Totti", "Roberto Baggio", "Rivaldo", "Romário", "Gabriel Batistuta"],
    },
    "P103": {
        "French": ["Jules Verne", "Alexandre Dumas", "Honoré de Balzac", "Émile Zola", "Charles Baudelaire",
                   "Guy de Maupassant", "Jean-Jacques Rousseau", "Denis Diderot", "Simone de Beauvoir", "Stendhal",
                   "Arthur Rimbaud", "Paul Verlaine", "Blaise Pascal", "Montesquieu"],
        "German": ["Bertolt Brecht", "Hermann Hesse", "Günter Grass", "Heinrich Heine",
                   "Georg Wilhelm Friedrich Hegel", "Arthur Schopenhauer", "Gottfried Wilhelm Leibniz", "Max Weber",
                   "Richard Strauss", "Rainer Maria Rilke", "Sigmund Freud", "Martin Heidegger", "Jürgen Habermas"],
        "Russian": ["Boris Pasternak", "Alexander Solzhenitsyn", "Mikhail Lermontov", "Ivan Bunin", "Maxim Gorky",
                    "Joseph Brodsky", "Dmitri Shostakovich", "Modest Mussorgsky", "Nikolai Rimsky-Korsakov"],
        "Italian": ["Alessandro Manzoni", "Luigi Pirandello", "Italo Calvino",
                    "Giacomo Leopardi", "Primo Levi", "Alberto Moravia", "Gabriele D'Annunzio", "Giacomo Puccini",
                    "Amerigo Vespucci", "Cesare Pavese"],
        "Japanese": ["Yasunari Kawabata", "Kenzaburō Ōe", "Natsume Sōseki", "Ryūnosuke Akutagawa", "Osamu Tezuka",
                     "Katsushika Hokusai", "Yasujirō Ozu", "Kōbō Abe", "Banana Yoshimoto", "Matsuo Bashō",
                     "Osamu Dazai", "Tokugawa Ieyasu", "Oda Nobunaga"],
        "Chinese": ["Confucius", "Lu Xun", "Lao Tzu", "Li Bai", "Du Fu", "Sun Tzu", "Mo Yan", "Ba Jin", "Mencius",
                    "Cao Xueqin"],
        "Greek": ["Homer", "Sophocles", "Euripides", "Herodotus", "Thucydides", "Aeschylus", "Aristophanes", "Hesiod",
                  "Sappho", "Epicurus", "Xenophon", "Plutarch"],
        "Portuguese": ["Fernando Pessoa", "José Saramago", "Luís de Camões", "Jorge Amado", "Machado de Assis",
                       "Eça de Queirós", "Vasco da Gama", "Ferdinand Magellan", "Amália Rodrigues"],
        "Polish": ["Adam Mickiewicz", "Czesław Miłosz", "Bolesław Prus", "Juliusz Słowacki", "Witold Gombrowicz",
                   "Zbigniew Herbert", "Tadeusz Kościuszko"],
    },
    "P495": {
        "Japan": ["Hitachi", "Casio", "Seiko", "Kawasaki", "Sega", "Bandai", "Capcom",
                  "Square Enix", "Uniqlo", "Shiseido", "Asics", "Isuzu", "Daihatsu", "Bridgestone", "Ricoh", "Epson",
                  "Kyocera", "Konami"],
        "Germany": ["Deutsche Bank", "Allianz", "Henkel", "Nivea", "Opel", "Miele", "Haribo", "Lidl", "Aldi",
                    "Hugo Boss", "Zeiss", "Leica", "Deutsche Telekom"],
        "Italy": ["Versace", "Barilla", "Ferrero", "Lavazza", "Olivetti", "Piaggio", "Bulgari", "Eni", "Fendi",
                  "Campari", "Beretta"],
        "France": ["Dior", "Hermès", "Cartier", "Bic", "Dassault", "Thales", "AXA", "Sodexo", "Alstom", "Lacoste",
                   "Évian", "Ubisoft"],
        "China": ["Huawei", "Alibaba", "Baidu", "Tencent", "Lenovo", "Xiaomi", "BYD", "Haier", "ZTE", "Sinopec",
                  "Geely"],
        "India": ["Tata", "Mahindra", "Bajaj", "Infosys", "Wipro", "Reliance Industries", "Godrej", "Hero MotoCorp"],
        "Russia": ["Kaspersky", "Yandex", "Gazprom", "Lukoil", "Aeroflot", "Rosneft", "Lada", "Sberbank"],
    },
    "P30": {
        "Europe": ["Ireland", "Iceland", "Croatia", "Serbia", "Romania", "Bulgaria", "the Czech Republic", "Slovakia",
                   "Slovenia", "Estonia", "Latvia", "Lithuania", "Albania", "Luxembourg", "Malta",
                   "Bosnia and Herzegovina", "North Macedonia", "Montenegro", "Moldova", "Ukraine"],
        "Asia": ["Iran", "Afghanistan", "Sri Lanka", "Myanmar", "Bhutan", "Uzbekistan", "Singapore",
                 "North Korea", "Brunei", "Kyrgyzstan", "Tajikistan", "Turkmenistan", "the Maldives"],
        "Africa": ["Namibia", "Rwanda", "Madagascar", "Malawi", "Chad", "Burundi", "Eritrea", "Lesotho",
                   "South Africa", "Mauritius", "Djibouti", "South Sudan", "Sierra Leone", "Eswatini",
                   "the Central African Republic"],
        "South America": ["Guyana", "Suriname"],
        "North America": ["Canada", "Haiti", "Belize", "Grenada", "Saint Lucia", "Dominica", "Antigua and Barbuda"],
    },
}

EXTENDED_RELATIONS: list[Relation] = [
    Relation(
        "P27",  # country of citizenship of a person
        "{} is a famous person from the country of",
        ["{} is a well-known person from the country of", "{} comes from the country of",
         "{} is a notable citizen of the country of"],
        ["{} is best remembered for", "Early in life, {}"],
        {
            "Japan": ["Shigeru Miyamoto", "Akira Toriyama", "Hideo Kojima", "Takeshi Kitano", "Yayoi Kusama",
                      "Junichiro Koizumi", "Emperor Akihito", "Fumio Kishida", "Ken Watanabe", "Hidetoshi Nakata",
                      "Masashi Kishimoto", "Eiichiro Oda"],
            "India": ["Mahatma Gandhi", "Jawaharlal Nehru", "Narendra Modi", "Rabindranath Tagore", "Amitabh Bachchan",
                      "Indira Gandhi", "A. P. J. Abdul Kalam", "Aishwarya Rai", "Manmohan Singh",
                      "Subhas Chandra Bose", "Vallabhbhai Patel", "B. R. Ambedkar", "Lata Mangeshkar"],
            "Italy": ["Luciano Pavarotti", "Federico Fellini", "Andrea Bocelli", "Giorgio Armani", "Sophia Loren",
                      "Benito Mussolini", "Roberto Benigni", "Monica Bellucci", "Valentino Rossi", "Alessandro Volta",
                      "Guglielmo Marconi", "Maria Montessori", "Giorgia Meloni"],
            "France": ["Napoleon Bonaparte", "Joan of Arc", "Louis Pasteur", "François Mitterrand",
                       "Nicolas Sarkozy", "Brigitte Bardot", "Jacques Cousteau", "Louis XIV",
                       "Antoine de Saint-Exupéry", "François Hollande", "Georges Pompidou", "Serge Gainsbourg"],
            "Germany": ["Konrad Adenauer", "Gerhard Schröder", "Karl Lagerfeld", "Willy Brandt", "Helmut Schmidt",
                        "Johannes Gutenberg", "Wilhelm Röntgen", "Robert Koch", "Rudolf Diesel", "Carl Benz",
                        "Albrecht Dürer", "Olaf Scholz", "Michael Schumacher"],
            "China": ["Mao Zedong", "Xi Jinping", "Deng Xiaoping", "Jack Ma", "Sun Yat-sen", "Zhou Enlai",
                      "Jackie Chan", "Li Keqiang", "Hu Jintao", "Jiang Zemin", "Ai Weiwei", "Zhang Yimou",
                      "Qin Shi Huang"],
            "Canada": ["Justin Trudeau", "Celine Dion", "Justin Bieber", "Shania Twain", "Avril Lavigne",
                       "Leonard Cohen", "Pierre Trudeau", "The Weeknd", "Margaret Atwood", "Terry Fox",
                       "Frederick Banting", "Stephen Harper", "Jean Chrétien"],
            "Russia": ["Yuri Gagarin", "Dmitri Mendeleev", "Ivan Pavlov", "Nikita Khrushchev", "Peter the Great",
                       "Mikhail Kalashnikov", "Valentina Tereshkova", "Dmitry Medvedev", "Sergey Lavrov",
                       "Grigori Rasputin", "Andrei Sakharov", "Alexei Navalny"],
            "Brazil": ["Ayrton Senna", "Gisele Bündchen", "Luiz Inácio Lula da Silva", "Jair Bolsonaro",
                       "Oscar Niemeyer", "Paulo Coelho", "Alberto Santos-Dumont", "Caetano Veloso", "Dilma Rousseff",
                       "Getúlio Vargas"],
            "Mexico": ["Frida Kahlo", "Diego Rivera", "Carlos Slim", "Guillermo del Toro", "Alfonso Cuarón",
                       "Benito Juárez", "Pancho Villa", "Emiliano Zapata", "Andrés Manuel López Obrador",
                       "Vicente Fox", "Alejandro González Iñárritu", "Cantinflas"],
            "Spain": ["Antonio Banderas", "Penélope Cruz", "Francisco Franco", "Pedro Almodóvar", "Fernando Alonso",
                      "Plácido Domingo", "Julio Iglesias", "Javier Bardem", "Francisco Goya", "Diego Velázquez",
                      "Pedro Sánchez", "Juan Carlos I"],
            "Egypt": ["Gamal Abdel Nasser", "Anwar Sadat", "Hosni Mubarak", "Naguib Mahfouz", "Omar Sharif",
                      "Umm Kulthum", "Tutankhamun", "Ramesses II", "Abdel Fattah el-Sisi",
                      "Boutros Boutros-Ghali"],
            "Greece": ["Socrates", "Plato", "Aristotle", "Pericles", "Hippocrates", "Nana Mouskouri", "Alexis Tsipras",
                       "Kyriakos Mitsotakis", "Nikos Kazantzakis", "Vangelis",
                       "Leonidas"],
            "Poland": ["Lech Wałęsa", "Pope John Paul II", "Andrzej Duda",
                       "Wisława Szymborska", "Stanisław Lem", "Henryk Sienkiewicz", "Józef Piłsudski",
                       "Krzysztof Kieślowski", "Andrzej Wajda"],
            "Sweden": ["Alfred Nobel", "Greta Thunberg", "Ingmar Bergman", "Carl Linnaeus", "Astrid Lindgren",
                       "Avicii", "Anders Celsius", "Dag Hammarskjöld", "Olof Palme", "Stieg Larsson"],
            "Norway": ["Roald Amundsen", "Edvard Munch", "Henrik Ibsen", "Edvard Grieg", "Magnus Carlsen",
                       "Fridtjof Nansen", "Jens Stoltenberg", "Knut Hamsun", "Liv Ullmann"],
            "Ireland": ["James Joyce", "Oscar Wilde", "Bono", "Samuel Beckett", "W. B. Yeats", "Conor McGregor",
                        "Enya", "Bram Stoker", "Sinéad O'Connor", "Michael D. Higgins",
                        "Leo Varadkar"],
            "Argentina": ["Eva Perón", "Juan Perón", "Pope Francis", "Javier Milei", "Juan Manuel Fangio",
                          "Astor Piazzolla", "Mauricio Macri", "Cristina Fernández de Kirchner", "Ernesto Sabato"],
            "Turkey": ["Mustafa Kemal Atatürk", "Recep Tayyip Erdoğan", "Orhan Pamuk", "İsmet İnönü", "Turgut Özal",
                       "Sezen Aksu", "Fatih Terim"],
            "South Africa": ["Nelson Mandela", "Desmond Tutu", "Jacob Zuma", "Cyril Ramaphosa", "F. W. de Klerk",
                             "Trevor Noah", "Steve Biko", "Thabo Mbeki", "Nadine Gordimer"],
        },
    ),
    Relation(
        "P131",  # country a region (state, province) belongs to
        "{} is a region in the country of",
        ["{} is part of the country of", "{} is an administrative region of the country of",
         "{} belongs to the country of"],
        ["The landscape of {} is", "Visitors to {} can"],
        {
            "Germany": ["Saxony", "Thuringia", "Baden-Württemberg", "Schleswig-Holstein",
                        "Rhineland-Palatinate", "Mecklenburg-Vorpommern", "Saarland", "North Rhine-Westphalia"],
            "France": ["Normandy", "Brittany", "Provence", "Burgundy", "Alsace", "Corsica", "Lorraine", "Auvergne",
                       "Aquitaine", "Occitanie", "Picardy", "Champagne", "Gascony", "Dordogne"],
            "Italy": ["Tuscany", "Sicily", "Sardinia", "Lombardy", "Veneto", "Liguria", "Calabria",
                      "Umbria", "Apulia", "Campania", "Lazio", "Emilia-Romagna", "Abruzzo", "Basilicata"],
            "Spain": ["Catalonia", "Andalusia", "Aragon", "Asturias", "Castile and León", "Murcia", "Extremadura",
                      "Navarre", "Cantabria", "the Canary Islands", "the Balearic Islands"],
            "Canada": ["Ontario", "Quebec", "Alberta", "British Columbia", "Manitoba", "Saskatchewan", "Nova Scotia",
                       "New Brunswick", "Newfoundland", "Prince Edward Island", "Nunavut"],
            "India": ["Kerala", "Rajasthan", "Gujarat", "Tamil Nadu", "Bihar", "Goa", "Assam", "Karnataka",
                      "Maharashtra", "Uttar Pradesh", "West Bengal", "Odisha", "Telangana", "Sikkim",
                      "Himachal Pradesh"],
            "China": ["Sichuan", "Yunnan", "Guangdong", "Hunan", "Hubei", "Fujian", "Zhejiang", "Shandong", "Jiangsu",
                      "Henan", "Guangxi", "Hainan", "Shaanxi", "Anhui"],
            "Japan": ["Hokkaido", "Kyushu", "Honshu", "Shikoku", "Okinawa Prefecture", "Kanto", "Kansai", "Tohoku",
                      "Chubu", "Chugoku"],
            "Mexico": ["Yucatán", "Chihuahua", "Jalisco", "Oaxaca", "Sonora", "Baja California", "Chiapas", "Sinaloa",
                       "Tabasco", "Michoacán"],
            "Russia": ["Tatarstan", "Dagestan", "Kamchatka", "Yakutia", "Bashkortostan", "Chukotka"],
        },
    ),
    Relation(
        "P17-landmark",  # country a landmark is in
        "{} is located in the country of",
        ["{} is a landmark in the country of", "{} can be found in the country of",
         "{} is a famous site in the country of"],
        ["The history of {} goes back to", "Travellers who see {}"],
        {
            "India": ["The Taj Mahal", "The Red Fort", "The Qutub Minar", "The Golden Temple", "The Hawa Mahal",
                      "The Ajanta Caves", "The Lotus Temple", "The Mysore Palace", "The Ellora Caves",
                      "The Meenakshi Temple", "The Amber Fort", "Fatehpur Sikri", "The Charminar"],
            "Egypt": ["The Great Sphinx", "Abu Simbel", "The Valley of the Kings", "The Karnak Temple", "Saqqara",
                      "The Temple of Philae", "The Great Pyramid", "The Step Pyramid of Djoser", "The Suez Canal",
                      "Mount Sinai", "The Temple of Hatshepsut"],
            "China": ["The Great Wall", "The Terracotta Army", "The Leshan Giant Buddha", "The Three Gorges Dam",
                      "The Mogao Caves", "The Bund", "The Li River", "The Yellow Mountains", "The Longmen Grottoes",
                      "The Shaolin Temple", "The West Lake", "Zhangjiajie"],
            "Peru": ["Machu Picchu", "The Nazca Lines", "Sacsayhuamán", "Chan Chan", "Ollantaytambo",
                     "The Colca Canyon",
                     "Huacachina", "Rainbow Mountain"],
            "Mexico": ["Chichen Itza", "Teotihuacan", "Palenque", "Tulum", "Monte Albán", "Uxmal", "Copper Canyon",
                       "Xochimilco", "Calakmul"],
            "Japan": ["Himeji Castle", "The Fushimi Inari Shrine", "Kinkaku-ji", "The Itsukushima Shrine", "Todai-ji",
                      "Senso-ji", "Mount Fuji", "The Meiji Shrine", "Nikko Tosho-gu", "Ginkaku-ji", "Kiyomizu-dera",
                      "The Great Buddha of Kamakura"],
            "Greece": ["Delphi", "Knossos", "Meteora", "Mycenae", "Mount Athos", "Epidaurus", "Mount Olympus",
                       "Mystras",
                       "Vergina"],
            "Turkey": ["Ephesus", "Cappadocia", "Pamukkale", "Göbekli Tepe", "Nemrut Dağ", "Mount Ararat",
                       "Sumela Monastery", "Aspendos"],
            "France": ["Mont Saint-Michel", "The Palace of Versailles", "The Château de Chambord", "The Lascaux caves",
                       "Carcassonne", "The Pont du Gard", "The Château de Chenonceau", "The Millau Viaduct",
                       "The Gorges du Verdon", "Rocamadour", "Chartres Cathedral"],
            "Italy": ["Pompeii", "The Amalfi Coast", "Mount Vesuvius", "Lake Como", "The Dolomites", "Cinque Terre",
                      "Mount Etna", "Herculaneum", "The Valley of the Temples"],
            "Germany": ["Neuschwanstein Castle", "Sanssouci", "Heidelberg Castle", "The Black Forest",
                        "Hohenzollern Castle", "The Wartburg", "Aachen Cathedral", "The Lorelei"],
            "England": ["Stonehenge", "Hadrian's Wall", "Blenheim Palace", "The White Cliffs of Dover",
                        "Canterbury Cathedral", "The Lake District", "Stratford-upon-Avon", "Salisbury Cathedral"],
        },
    ),
    Relation(
        "P30-river",  # continent a river flows on
        "{} is a river on the continent of",
        ["{} flows through the continent of", "{} is a major river on the continent of",
         "{} is one of the great rivers of the continent of"],
        ["The waters of {}", "Along the banks of {}"],
        {
            "Europe": ["The Danube", "The Rhine", "The Thames", "The Seine", "The Loire", "The Elbe", "The Volga",
                       "The Tiber", "The Po", "The Oder", "The Vistula", "The Rhône", "The Dnieper", "The Ebro",
                       "The Tagus", "The Douro", "The Shannon", "The Garonne", "The Meuse", "The Arno"],
            "Asia": ["The Yangtze", "The Ganges", "The Mekong", "The Indus", "The Brahmaputra", "The Yellow River",
                     "The Euphrates", "The Tigris", "The Amur", "The Ob", "The Yenisei", "The Lena", "The Irrawaddy",
                     "The Salween", "The Pearl River", "The Syr Darya", "The Amu Darya", "The Chao Phraya"],
            "Africa": ["The Nile", "The Zambezi", "The Limpopo", "The Orange River", "The Okavango", "The Volta",
                       "The Congo River", "The Blue Nile", "The White Nile", "The Kasai", "The Ubangi",
                       "The Shebelle"],
            "South America": ["The Amazon", "The Orinoco", "The Paraná", "The Magdalena", "The São Francisco",
                              "The Madeira", "The Rio Negro", "The Xingu", "The Tocantins", "The Purus", "The Japurá"],
            "North America": ["The Mississippi", "The Missouri", "The Hudson", "The Rio Grande", "The Yukon",
                              "The Columbia River", "The Colorado River", "The Ohio River", "The St. Lawrence River",
                              "The Mackenzie River", "The Snake River", "The Tennessee River", "The Arkansas River",
                              "The Delaware River", "The Potomac", "The Susquehanna"],
        },
    ),
    Relation(
        "P641-team",  # sport a professional team plays
        "{} play professional",
        ["{} are a team that plays professional", "{} are a professional team in the sport of",
         "{} compete in professional"],
        ["Fans of {} often", "Last season, {}"],
        {
            "basketball": ["The Los Angeles Lakers", "The Boston Celtics", "The Chicago Bulls", "The New York Knicks",
                           "The Houston Rockets", "The Phoenix Suns", "The Denver Nuggets", "The Toronto Raptors",
                           "The Golden State Warriors", "The Miami Heat", "The San Antonio Spurs",
                           "The Dallas Mavericks", "The Philadelphia 76ers", "The Detroit Pistons",
                           "The Cleveland Cavaliers", "The Milwaukee Bucks", "The Utah Jazz",
                           "The Portland Trail Blazers", "The Sacramento Kings", "The Brooklyn Nets",
                           "The Atlanta Hawks", "The Indiana Pacers", "The Orlando Magic", "The Memphis Grizzlies",
                           "The Minnesota Timberwolves", "The Oklahoma City Thunder", "The Charlotte Hornets",
                           "The Washington Wizards", "The New Orleans Pelicans", "The Los Angeles Clippers"],
            "baseball": ["The New York Yankees", "The Boston Red Sox", "The Los Angeles Dodgers", "The Chicago Cubs",
                         "The St. Louis Cardinals", "The New York Mets", "The Atlanta Braves", "The Seattle Mariners",
                         "The Houston Astros", "The San Francisco Giants", "The Chicago White Sox",
                         "The Oakland Athletics", "The Philadelphia Phillies", "The Detroit Tigers",
                         "The Cleveland Guardians", "The Baltimore Orioles", "The Toronto Blue Jays",
                         "The Texas Rangers", "The Kansas City Royals", "The Minnesota Twins", "The Cincinnati Reds",
                         "The Pittsburgh Pirates", "The Milwaukee Brewers", "The San Diego Padres",
                         "The Colorado Rockies", "The Tampa Bay Rays", "The Miami Marlins",
                         "The Arizona Diamondbacks", "The Washington Nationals", "The Los Angeles Angels"],
            "hockey": ["The Toronto Maple Leafs", "The Montreal Canadiens", "The Boston Bruins",
                       "The Detroit Red Wings",
                       "The Chicago Blackhawks", "The Edmonton Oilers", "The Pittsburgh Penguins",
                       "The Calgary Flames", "The New York Rangers", "The Philadelphia Flyers",
                       "The New York Islanders", "The New Jersey Devils", "The Los Angeles Kings",
                       "The Tampa Bay Lightning", "The Washington Capitals", "The St. Louis Blues",
                       "The Colorado Avalanche", "The Dallas Stars", "The Vegas Golden Knights", "The Minnesota Wild",
                       "The Anaheim Ducks", "The San Jose Sharks", "The Nashville Predators", "The Buffalo Sabres",
                       "The Carolina Hurricanes", "The Florida Panthers", "The Seattle Kraken",
                       "The Columbus Blue Jackets"],
            "football": ["The New England Patriots", "The Dallas Cowboys", "The Green Bay Packers",
                         "The Pittsburgh Steelers", "The San Francisco 49ers", "The Denver Broncos",
                         "The Miami Dolphins", "The Kansas City Chiefs", "The Chicago Bears", "The New York Giants",
                         "The Las Vegas Raiders", "The Seattle Seahawks", "The Philadelphia Eagles",
                         "The Baltimore Ravens", "The Minnesota Vikings", "The New Orleans Saints",
                         "The Buffalo Bills", "The Atlanta Falcons", "The Detroit Lions", "The Cleveland Browns",
                         "The Indianapolis Colts", "The Los Angeles Rams", "The Washington Commanders",
                         "The Carolina Panthers", "The Tampa Bay Buccaneers", "The Cincinnati Bengals",
                         "The Houston Texans", "The Jacksonville Jaguars", "The Tennessee Titans",
                         "The Arizona Cardinals", "The New York Jets", "The Los Angeles Chargers"],
        },
    ),
    Relation(
        "P1532",  # country a football club plays for
        "{} is a football club from the country of",
        ["{} is a soccer club from the country of", "{} is a football team based in the country of",
         "{} plays its home games in the country of"],
        ["Supporters of {}", "The stadium of {}"],
        {
            "England": ["Manchester United", "Manchester City", "Liverpool FC", "Arsenal FC", "Chelsea FC",
                        "Tottenham Hotspur", "Everton FC", "Aston Villa", "Newcastle United", "West Ham United",
                        "Leeds United", "Nottingham Forest", "Leicester City", "Wolverhampton Wanderers",
                        "Southampton FC", "Fulham FC", "Sunderland AFC"],
            "Spain": ["Real Madrid", "Atlético Madrid", "Sevilla FC", "Valencia CF", "Athletic Bilbao", "Real Betis",
                      "Villarreal CF", "Real Sociedad", "Celta Vigo", "Deportivo La Coruña", "RCD Espanyol"],
            "Italy": ["Juventus", "AC Milan", "Inter Milan", "AS Roma", "SSC Napoli", "ACF Fiorentina", "Atalanta BC",
                      "Torino FC", "Sampdoria", "Udinese"],
            "Germany": ["Borussia Dortmund", "Schalke 04", "Hamburger SV", "Eintracht Frankfurt",
                        "Borussia Mönchengladbach", "VfL Wolfsburg", "Hertha BSC", "1. FC Köln", "Union Berlin"],
            "Portugal": ["Benfica", "FC Porto", "Sporting CP", "Sporting Braga", "Boavista", "Vitória de Guimarães"],
            "Brazil": ["Flamengo", "Santos FC", "Corinthians", "Palmeiras", "Grêmio", "Fluminense", "Cruzeiro",
                       "Botafogo", "Sport Club Internacional"],
            "France": ["Olympique Lyonnais", "AS Saint-Étienne", "Stade Rennais", "OGC Nice", "RC Lens", "FC Lorient",
                       "Stade de Reims", "FC Metz"],
            "Scotland": ["Celtic FC", "Rangers FC", "Hibernian FC", "Heart of Midlothian", "Motherwell FC",
                         "Kilmarnock FC", "St Johnstone"],
            "Turkey": ["Galatasaray", "Fenerbahçe", "Beşiktaş", "Trabzonspor", "Bursaspor", "Göztepe"],
            "Argentina": ["Boca Juniors", "River Plate", "San Lorenzo de Almagro", "Newell's Old Boys",
                          "Rosario Central",
                          "Vélez Sarsfield", "Racing Club de Avellaneda"],
        },
    ),
    Relation(
        "P1080",  # mythology a deity belongs to
        "{} is a god in",
        ["{} is a deity in", "{} is worshipped as a god in", "{} is one of the gods of"],
        ["Legends about {} tell", "Ancient stories describe {} as"],
        {
            "Greek mythology": ["Zeus", "Hera", "Poseidon", "Athena", "Apollo", "Hermes", "Ares", "Aphrodite", "Hades",
                                "Dionysus", "Artemis", "Demeter", "Hephaestus", "Hestia", "Persephone", "Eros",
                                "Helios"],
            "Norse mythology": ["Thor", "Odin", "Loki", "Freya", "Baldur", "Heimdall", "Tyr", "Frigg", "Freyr",
                                "Njord", "Bragi", "Idun"],
            "Roman mythology": ["Jupiter", "Mars", "Minerva", "Juno", "Vulcan", "Janus", "Neptune", "Mercury",
                                "Ceres", "Bacchus", "Cupid", "Saturn"],
            "Egyptian mythology": ["Ra", "Osiris", "Anubis", "Horus", "Thoth", "Bastet", "Isis", "Ptah", "Amun",
                                   "Sekhmet", "Hathor"],
            "Hinduism": ["Vishnu", "Shiva", "Brahma", "Ganesha", "Krishna", "Hanuman", "Lakshmi", "Durga", "Kali",
                         "Indra", "Rama", "Saraswati", "Parvati"],
        },
    ),
    Relation(
        "P495-dish",  # country a dish comes from
        "{} is a dish from the country of",
        ["{} originated in the country of", "{} is a traditional dish from the country of",
         "{} is a famous food from the country of"],
        ["To prepare {}, you", "{} is usually served with"],
        {
            "Japan": ["Sushi", "Ramen", "Tempura", "Sashimi", "Miso soup", "Udon", "Teriyaki", "Onigiri",
                      "Okonomiyaki", "Takoyaki", "Sukiyaki", "Yakitori", "Tonkatsu", "Mochi"],
            "Italy": ["Pizza", "Lasagna", "Risotto", "Tiramisu", "Spaghetti carbonara", "Gelato", "Pesto", "Ravioli",
                      "Bruschetta", "Minestrone", "Focaccia", "Cannoli", "Panettone", "Osso buco", "Gnocchi"],
            "Mexico": ["Tacos", "Burritos", "Enchiladas", "Guacamole", "Quesadillas", "Tamales", "Mole poblano",
                       "Nachos", "Chiles en nogada", "Pozole", "Chilaquiles", "Tostadas", "Elote"],
            "India": ["Tandoori chicken", "Masala dosa", "Paneer tikka", "Chana masala",
                      "Butter chicken", "Dal makhani", "Vindaloo", "Idli", "Pani puri", "Palak paneer"],
            "France": ["Ratatouille", "Crêpes", "Coq au vin", "Bouillabaisse", "Escargots", "Cassoulet",
                       "Croque monsieur", "Beef bourguignon", "Soufflé", "Foie gras", "Tarte Tatin", "Baguette",
                       "Confit de canard"],
            "Spain": ["Paella", "Gazpacho", "Tortilla española", "Tapas", "Sangria", "Chorizo", "Jamón ibérico",
                      "Patatas bravas", "Pisto", "Fabada asturiana", "Crema catalana", "Pulpo a la gallega"],
            "China": ["Dim sum", "Peking duck", "Kung Pao chicken", "Mapo tofu", "Chow mein", "Wonton soup", "Hot pot",
                      "Char siu", "Xiaolongbao", "Sweet and sour pork", "Zongzi", "Jiaozi"],
            "Greece": ["Moussaka", "Souvlaki", "Tzatziki", "Gyros", "Spanakopita", "Feta cheese", "Taramasalata",
                       "Pastitsio", "Kleftiko"],
            "Thailand": ["Pad Thai", "Tom yum", "Green curry", "Massaman curry", "Tom kha gai",
                         "Pad kra pao", "Mango sticky rice", "Panang curry"],
            "Vietnam": ["Pho", "Banh mi", "Bun cha", "Goi cuon", "Cao lau", "Banh xeo", "Com tam"],
            "Russia": ["Pelmeni", "Beef Stroganoff", "Olivier salad", "Shchi", "Solyanka", "Kulebyaka", "Okroshka"],
            "Brazil": ["Feijoada", "Pão de queijo", "Brigadeiro", "Coxinha", "Moqueca", "Acarajé", "Caipirinha",
                       "Picanha"],
            "Peru": ["Ceviche", "Lomo saltado", "Anticuchos", "Causa limeña", "Ají de gallina",
                     "Papa a la huancaína", "Chicha morada"],
            "Germany": ["Bratwurst", "Currywurst", "Spätzle", "Sauerbraten", "Stollen", "Weisswurst",
                        "Schwarzwälder Kirschtorte"],
            "Hungary": ["Goulash", "Lángos", "Chicken paprikash", "Dobos torte", "Halászlé", "Lecsó"],
            "England": ["Fish and chips", "Yorkshire pudding", "Bangers and mash", "Toad in the hole", "Cornish pasty",
                        "Eton mess", "Sticky toffee pudding"],
        },
    ),
]


def relations_for(fact_set: str) -> list[Relation]:
    """The candidate relations of a fact set: ``default`` is RELATIONS itself; ``extended`` is RELATIONS
    with EXTRA_GROUPS appended to their groups (copies: RELATIONS is never modified), then EXTENDED_RELATIONS;
    ``extra`` has the extended set's candidates with MORE_GROUPS (scripts/fact_candidates_extra.py) appended
    (it takes what the extended set left out)."""
    if fact_set == "default":
        return RELATIONS
    if fact_set not in ("extended", "extra"):
        raise ValueError(f"unknown fact set {fact_set!r}; expected one of {FACT_SETS}")
    relations = _appended(RELATIONS, EXTRA_GROUPS, "EXTRA_GROUPS") + EXTENDED_RELATIONS
    if fact_set == "extra":
        from fact_candidates_extra import MORE_GROUPS

        relations = _appended(relations, MORE_GROUPS, "MORE_GROUPS")
    _validate(relations)
    return relations


def _appended(relations: list[Relation], more: dict[str, dict[str, list[str]]], name: str) -> list[Relation]:
    """Copies of ``relations`` with ``more``'s subjects appended to their groups (by relation id, then object)."""
    merged: list[Relation] = []
    for rel in relations:
        groups = {obj: list(subjects) for obj, subjects in rel.groups.items()}
        for obj, extra in more.get(rel.relation_id, {}).items():
            groups.setdefault(obj, []).extend(extra)
        merged.append(Relation(rel.relation_id, rel.template, list(rel.paraphrases), list(rel.generation), groups))
    unknown = set(more) - {rel.relation_id for rel in relations}
    if unknown:
        raise ValueError(f"{name} names relations that the set lacks: {sorted(unknown)}")
    return merged


def _validate(relations: list[Relation]) -> None:
    """Relation ids and main templates are distinct, and no subject is listed twice within a relation."""
    ids = Counter(rel.relation_id for rel in relations)
    templates = Counter(rel.template for rel in relations)
    problems = [f"relation id {i!r} used {n} times" for i, n in ids.items() if n > 1]
    problems += [f"template {t!r} used {n} times" for t, n in templates.items() if n > 1]
    for rel in relations:
        subjects = Counter(s for group in rel.groups.values() for s in group)
        problems += [f"{rel.relation_id}: subject {s!r} listed {n} times" for s, n in subjects.items() if n > 1]
    if problems:
        raise ValueError("bad candidate relations: " + "; ".join(problems))
